"""Atomic training checkpoints that let a run continue exactly where it stopped.

A checkpoint holds the model, optimiser, step, elapsed training time and every random
number generator's state (one set per training process, since each process draws its own
dropout), plus the fp16 loss scaler when there is one. It is written to a temporary file
and renamed into place, so a crash mid-write never leaves a truncated checkpoint. In a
multi-process run the main process writes it and every process reads it.

It is read with ``torch.load(weights_only=True)``: nothing in it is unpickled as code, so a
run directory someone shares cannot run code on the reader's machine. For that every entry
is a tensor or a plain number, string, list or dict; the numpy RNG state is stored as its
parts (``_numpy_state``) rather than as the tuple numpy returns.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: truncated, corrupt, or not written by this package."""


def _numpy_state() -> dict:
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _set_numpy_state(state: dict) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["position"],
                         state["has_gauss"], state["cached_gaussian"]))


def rng_state() -> dict:
    """This process's RNG states: torch (CPU and, when present, CUDA), numpy, python."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(),
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    _set_numpy_state(state["numpy"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss"]))
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
    try:
        torch.save(state, tmp)
    except (OSError, RuntimeError) as error:  # torch reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write the checkpoint {path} ({error}){disk_space_hint(path)}; the previous "
                      "checkpoint, if any, is intact") from error
    os.replace(tmp, path)


def disk_space_hint(path: Path) -> str:
    """"; the disk ... has N MiB free: is it full?" (empty when that cannot be read)."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return ""
    return f"; the disk holding {Path(path).parent} has {free / 2**20:.0f} MiB free: is it full?"


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
    state = read_checkpoint(path)
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


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents, read without unpickling code; a clear error naming the file
    when it is truncated, corrupt or holds anything but tensors and plain values."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises RuntimeError, EOFError or UnpicklingError here
        raise CheckpointError(
            f"{path} cannot be read as a detrdistill checkpoint ({type(error).__name__}: {str(error)[:200]}). "
            "It is truncated or corrupt, or was written by something else (checkpoints are read with "
            "weights_only=True, so one holding pickled objects is refused). Delete it to train that run again "
            "from step 0, or restore a good copy; model/ and eval.json of a finished run do not need it."
        ) from error
