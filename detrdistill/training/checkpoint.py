"""Atomic training checkpoints that let a run continue exactly where it stopped.

A checkpoint holds the model, optimiser, step, elapsed training time and every random
number generator's state. It is written to a temporary file and renamed into place, so a
crash mid-write never leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, step: int, elapsed_s: float) -> None:
    state = {
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict(),
        "step": step,
        "elapsed_s": elapsed_s,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer) -> tuple[int, float]:
    """Restore modules, optimiser and RNGs in place; return (step, elapsed_s)."""
    # Our own file, holding numpy and python RNG states (not plain tensors).
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = sorted(set(modules) - set(state["modules"]))
    if missing:
        raise ValueError(f"{path} holds no state for {missing}: it was written by a different kind of run")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["step"], state["elapsed_s"]
