"""Where a DETRDistill step's time goes: one gpu preset pair, each component alone, and profiles.

    python benchmarks/profile_distill_step.py [--family conditional_detr] [--small]

Builds the pair at paper size (random init) on the GPU if there is one, takes one real batch
of the preset's size and prints: the time of a distill step with no component, each of LD,
FD and AD alone, and all three (two timed steps each after a warm-up); a cProfile of one
all-three step sorted by own time; and torch.profiler tables sorted by own device and own
CPU time. `--small` shrinks the backbone and images so that it runs on a CPU in a minute
(the transformer, queries and batch stay at paper size).

benchmarks/results/gpu_profile.txt is its output on an H200 (see gpu.md).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from detrdistill.precision import autocast

sys.path.insert(0, str(Path(__file__).parent))
from gpu_preset import PAIRS, build_pair  # noqa: E402

SMALL = {"model.backbone.layer_type": "basic", "model.backbone.embedding_size": 8,
         "model.backbone.hidden_sizes": [8, 16, 32, 64], "model.backbone.depths": [1, 1, 1, 1],
         "data.image_size": 128, "data.batch_size": 4, "train.mixed_precision": "no"}
COMPONENTS = ("logits", "features", "assignment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--family", choices=list(PAIRS), default="conditional_detr")
    parser.add_argument("--small", action="store_true", help="small backbone and images, for a CPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student_config, objective, parameters, (batch,) = build_pair(
        args.data, args.family, device, SMALL if args.small else {}, num_batches=1)
    precision = student_config.train.mixed_precision

    def step() -> None:
        with autocast(precision, device):
            loss = sum(objective(batch).values())
        loss.backward()
        for p in parameters:
            p.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        step()
    for enabled in [(), *((c,) for c in COMPONENTS), COMPONENTS]:
        for component in COMPONENTS:
            getattr(objective.config, component).enabled = component in enabled
        step()
        started = time.perf_counter()
        step()
        step()
        print("components", enabled, round((time.perf_counter() - started) / 2 * 1000, 1), "ms", flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    step()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as traced:
        step()
    if device.type == "cuda":
        print(traced.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    print(traced.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
