"""Dotted-key overrides of a run config: ``{"distill.logits.pos_cls": False, "train.steps": 800}``.

The benchmark suites describe every variant as such a mapping applied to a preset, so a
variant reads like the paper's ablation switch it stands for.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from detrdistill.config import ConfigError, RunConfig, config_from_dict, config_to_dict, has_type, type_name


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
            elif not has_type(value, hint):
                raise ConfigError(f"{where}: {key} must be {type_name(hint)}, got {type(value).__name__} {value!r}")
            else:
                section[name] = list(value) if isinstance(value, tuple) else value  # YAML has no tuples
    try:
        return config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error
