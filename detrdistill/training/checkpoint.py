"""Atomic training checkpoints that let a run continue exactly where it stopped.

A checkpoint holds the model, optimiser, step, elapsed training time and every random
number generator's state (one set per training process, since each process draws its own
dropout), plus the fp16 loss scaler when there is one. It is written to a temporary file
and renamed into place, so a crash mid-write never leaves a truncated checkpoint. In a
multi-process run the main process writes it and every process reads it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state() -> dict:
    """This process's RNG states: torch (CPU and, when present, CUDA), numpy, python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizer,
    step: int,
    elapsed_s: float,
    rng_per_process: list[dict] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write the checkpoint. ``rng_per_process``: every process's ``rng_state()`` in rank
    order (default: this process's only)."""
    rng_per_process = rng_per_process or [rng_state()]
    state = {
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict(),
        "step": step,
        "elapsed_s": elapsed_s,
        "rng": rng_per_process[0],
        "rng_per_process": rng_per_process,
    }
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizer,
    process_index: int = 0,
    num_processes: int = 1,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[int, float]:
    """Restore modules, optimiser, scaler and this process's RNGs in place; return (step, elapsed_s).

    A run resumed with another number of processes restores the main process's RNGs in
    every process (the batches are still the same; dropout draws then differ).
    """
    # Our own file, holding numpy and python RNG states (not plain tensors).
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = sorted(set(modules) - set(state["modules"]))
    if missing:
        raise ValueError(f"{path} holds no state for {missing}: it was written by a different kind of run")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    per_process = state.get("rng_per_process", [state["rng"]])
    set_rng_state(per_process[process_index] if len(per_process) == num_processes else state["rng"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return state["step"], state["elapsed_s"]
