"""Training step times of several runs measured in one process, interleaved round by round.

The equal-time student's budget must not depend on what else the machine ran while the
DETRDistill run trained: two runs' wall clocks, each taken at its own time, differ by the
machine's load as much as by their cost (with one other torch process on 2 cores a step is
10-40x slower). Here every run takes one step per round on the same batch, round after
round, so load that comes and goes falls on all of them alike, and the medians' ratio is
what one run costs against another on this machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from detrdistill.config import RunConfig
from detrdistill.data.collate import collate_detection
from detrdistill.distiller import DETRDistillObjective
from detrdistill.models.adapters import adapter_for
from detrdistill.models.build import build_detector, load_detector
from detrdistill.models.label_sets import restrict_to_dataset_classes
from detrdistill.training.loop import DetectionObjective
from detrdistill.training.optim import build_optimizer
from detrdistill.training.prepare import load_datasets


@dataclass(frozen=True)
class TimedRun:
    """A run's two timed calls on a batch: its training step, and its student's no-grad forward."""

    step: Callable[[dict], None]
    forward: Callable[[dict], None]


def timed_run(config: RunConfig, teacher_dir: Path | None, train_set) -> TimedRun:
    """The run's objective, freshly built: a step costs the same at any weights."""
    model = build_detector(config.model, train_set.id2label).train()
    if teacher_dir is None:
        objective, extra = DetectionObjective(model, config), []
    else:
        teacher = restrict_to_dataset_classes(load_detector(teacher_dir), train_set.id2label, str(teacher_dir))
        objective = DETRDistillObjective(model, teacher, config)
        extra = [objective.heads]
    optimizer = build_optimizer(model, config.train, extra)

    def step(batch: dict) -> None:
        loss = sum(objective(batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def forward(batch: dict) -> None:
        with torch.no_grad():
            adapter_for(model)(batch["pixel_values"], batch["pixel_mask"])

    return TimedRun(step, forward)


def training_batches(data: Path, config: RunConfig, num_batches: int = 4) -> tuple[object, list[dict]]:
    """(train split, ``num_batches`` collated batches of ``config``'s batch size from it)."""
    train_set, _ = load_datasets(Path(data), config.data)
    size = config.data.batch_size
    if len(train_set) < size:
        raise ValueError(f"{data}: the train split has {len(train_set)} images, fewer than one batch of {size}")
    batches = [collate_detection([train_set[(i * size + j) % len(train_set)] for j in range(size)])
               for i in range(num_batches)]
    return train_set, batches


def interleaved_ms(calls: Mapping[str, Callable[[dict], None]], batches: list[dict], rounds: int = 8,
                   warmup: int = 2) -> dict[str, float]:
    """Median milliseconds of each call: {name: ms}. Every call runs once per round, in order,
    on the round's batch; the first ``warmup`` rounds, where allocators and caches settle, are
    not counted."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + rounds):
        batch = batches[round_index % len(batches)]
        for name, call in calls.items():
            started = time.perf_counter()
            call(batch)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in seconds.items()}


def interleaved_step_ms(runs: dict[str, tuple[RunConfig, Path | None]], data: Path, rounds: int = 8,
                        warmup: int = 2, num_batches: int = 4) -> dict[str, float]:
    """Median milliseconds per training step of each run: {name: ms}.

    ``runs``: name -> (its config, its teacher directory or None). Every run steps once per
    round on the same batch (the first config's batch size, from its train split).
    """
    train_set, batches = training_batches(data, next(iter(runs.values()))[0], num_batches)
    torch.manual_seed(0)
    steps = {name: timed_run(config, teacher, train_set).step for name, (config, teacher) in runs.items()}
    return interleaved_ms(steps, batches, rounds, warmup)
