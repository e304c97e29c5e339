"""Dotted-key overrides of a run config: ``{"distill.logits.pos_cls": False, "train.steps": 800}``.

The benchmark suites describe every variant as such a mapping applied to a preset, so a
variant reads like the paper's ablation switch it stands for.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from detrdistill.config import ConfigError, RunConfig, config_from_dict, config_to_dict


def apply_overrides(config: RunConfig, overrides: Mapping[str, Any], where: str = "overrides") -> RunConfig:
    """A new, validated ``RunConfig``: ``config`` with each dotted key set to its value.

    Every key must name an existing leaf field (``train.steps``, not ``train``) and every
    value must have that field's type; the result goes through the config's own validation
    (``config_from_dict``), so e.g. an unknown ``distill.features.mask`` is refused too.
    ``where`` names the source in error messages (a suite and variant, say).
    """
    values = config_to_dict(config)
    for key, value in overrides.items():
        section_cls, section, leaf = RunConfig, values, key.split(".")
        for depth, name in enumerate(leaf):
            fields = {f.name: f for f in dataclasses.fields(section_cls)}
            if name not in fields:
                parent = ".".join(leaf[:depth]) or "the run config"
                raise ConfigError(
                    f"{where}: unknown key {key!r}: {parent} has no field {name!r}; its fields are {sorted(fields)}"
                )
            hint = typing.get_type_hints(section_cls)[name]
            if depth < len(leaf) - 1:
                if not dataclasses.is_dataclass(hint):
                    raise ConfigError(f"{where}: unknown key {key!r}: {'.'.join(leaf[:depth + 1])} is a value, "
                                      "not a section")
                section_cls, section = hint, section[name]
            elif dataclasses.is_dataclass(hint):
                raise ConfigError(
                    f"{where}: key {key!r} names a section, not a field; set one of its fields instead, "
                    f"e.g. {key}.{dataclasses.fields(hint)[0].name}"
                )
            elif not _has_type(value, hint):
                raise ConfigError(f"{where}: {key} must be {_type_name(hint)}, got {type(value).__name__} {value!r}")
            else:
                section[name] = list(value) if isinstance(value, tuple) else value  # YAML has no tuples
    try:
        return config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


def _has_type(value: Any, hint: Any) -> bool:
    """``isinstance`` for the annotations config.py uses: int, float, bool, str, X | None, list[X]."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list | tuple) and all(_has_type(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # bool is an int subclass, but True as a step count is a mistake
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
