"""The one place that decides what a run directory holds and what may be done to it.

    empty        nothing there (or no such directory)
    started      files of a run that stopped before its first checkpoint (config.yaml, metrics.jsonl, ...)
    in_progress  a checkpoint.pt, no final evaluation yet
    finished     model/ or eval.json: a trained model is there, with or without its checkpoint

Without ``--resume`` only an empty or started directory is trained into; a finished run is
never overwritten, even once its checkpoint.pt has been cleaned up. With ``--resume`` there
must be a checkpoint to continue, and the config must be the recorded run's: only the budget
(``train.steps`` / ``train.minutes``, to extend a run) and settings that change what is logged
or how fast data loads may differ. Every refusal comes before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from detrdistill.config import ConfigError, RunConfig, config_to_dict
from detrdistill.training.checkpoint import CHECKPOINT_NAME

CONFIG_NAME = "config.yaml"
# Settings a resumed run may change: its budget, and what it logs, evaluates or caches.
RESUMABLE_CHANGES = {
    "train.steps", "train.minutes", "train.log_every", "train.checkpoint_every", "train.eval_every",
    "train.eval_max_images", "train.grad_diagnostic_every", "data.cache_mb", "data.num_workers",
    "data.eval_batch_size",
}


def run_dir_state(out_dir: Path) -> str:
    """"empty", "started", "in_progress" or "finished" (see the module docstring)."""
    out_dir = Path(out_dir)
    if (out_dir / "eval.json").is_file() or (out_dir / "model").is_dir():
        return "finished"
    if (out_dir / CHECKPOINT_NAME).is_file():
        return "in_progress"
    if out_dir.is_dir() and any(out_dir.iterdir()):
        return "started"
    return "empty"


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(recorded: dict, config: RunConfig) -> list[str]:
    """"key: recorded A, now B" for every setting that differs, beyond ``RESUMABLE_CHANGES``."""
    before, now = _flatten(recorded), _flatten(config_to_dict(config))
    return [f"{key}: recorded {before.get(key)!r}, now {now.get(key)!r}" for key in sorted(set(before) | set(now))
            if key not in RESUMABLE_CHANGES and before.get(key) != now.get(key)]


def check_run_dir(out_dir: Path, config: RunConfig, resume: bool) -> None:
    """Raise (FileExistsError, FileNotFoundError or ConfigError) unless training ``config`` into
    ``out_dir`` with this ``resume`` is what the directory allows."""
    out_dir = Path(out_dir)
    state = run_dir_state(out_dir)
    has_checkpoint = (out_dir / CHECKPOINT_NAME).is_file()
    if not resume:
        if state in ("finished", "in_progress"):
            held = [name for name in ("eval.json", "model/", CHECKPOINT_NAME) if (out_dir / name.rstrip("/")).exists()]
            raise FileExistsError(
                f"{out_dir} already holds {'a finished' if state == 'finished' else 'an unfinished'} run "
                f"({', '.join(held)}); pass --resume to continue it or choose another --out"
            )
        return
    if not has_checkpoint:
        if state == "finished":
            raise FileNotFoundError(
                f"{out_dir} holds a finished run whose {CHECKPOINT_NAME} is gone, so it cannot be continued; its "
                "model/ and eval.json stand. Train a longer run into another --out."
            )
        raise FileNotFoundError(f"nothing to resume in {out_dir}: there is no {CHECKPOINT_NAME}. Drop --resume to "
                                "start the run there.")
    recorded_file = out_dir / CONFIG_NAME
    if recorded_file.is_file():
        differences = config_differences(yaml.safe_load(recorded_file.read_text()) or {}, config)
        if differences:
            raise ConfigError(
                f"--resume continues the run recorded in {recorded_file}, but the config differs: "
                + "; ".join(differences) + ". Only the budget (train.steps, train.minutes) and logging or caching "
                "settings may change on resume; train the new config into another --out."
            )
