"""Time to load a training batch (read, augment, normalise, collate), as the training loop does.

    python benchmarks/data_loading.py --data data/shapes

The training loop loads in its own process (``data.num_workers: 0``: on 2 cores a worker
process competes with the training step), so this time adds to every step. It is timed with
images read from disk (``data.cache_mb: 0``) and from the in-memory cache that small splits use
by default (warmed by one pass first). Each sample's
augmentation is seeded by ``SeededAugmentation``; the benchmark also times seeding torch's
CPU generator alone against ``torch.manual_seed`` (which also queues seeds for every
accelerator backend), interleaved round by round. Writes benchmarks/results/data_loading.json
and data_loading.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from detrdistill.config import load_config
from detrdistill.data.collate import collate_detection
from detrdistill.training.prepare import load_datasets
from detrdistill.training.sampler import ResumableBatchSampler, SeededAugmentation

RESULTS = Path(__file__).parent / "results"
PRESET = "deformable_student"  # every preset shares the data settings (128 px, batch 8)
SEEDS_PER_ROUND = 1000


def seconds_per_call(function, calls: int) -> float:
    started = time.perf_counter()
    for index in range(calls):
        function(index)
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=50, help="training batches per round")
    args = parser.parse_args()

    config = load_config(PRESET)
    from_disk, _ = load_datasets(args.data, dataclasses.replace(config.data, cache_mb=0))
    cached, _ = load_datasets(args.data, config.data)
    if not cached.caches_images:
        raise SystemExit(f"{args.data}: the train split does not fit in data.cache_mb = {config.data.cache_mb} MiB")
    for index in range(len(cached)):
        cached[index]  # decodes every image once

    def batch_loader(train_set):
        items = SeededAugmentation(train_set)
        batch_indices = iter(ResumableBatchSampler(len(train_set), config.data.batch_size, seed=0, augment_seeds=True))
        return lambda _: collate_detection([items[item] for item in next(batch_indices)])

    load_from_disk, load_cached = batch_loader(from_disk), batch_loader(cached)
    timings = {"batch_ms": [], "cached_batch_ms": [], "cpu_seed_us": [], "manual_seed_us": []}
    for _ in range(args.rounds):
        timings["batch_ms"].append(1e3 * seconds_per_call(load_from_disk, args.batches))
        timings["cached_batch_ms"].append(1e3 * seconds_per_call(load_cached, args.batches))
        timings["cpu_seed_us"].append(1e6 * seconds_per_call(torch.default_generator.manual_seed, SEEDS_PER_ROUND))
        timings["manual_seed_us"].append(1e6 * seconds_per_call(torch.manual_seed, SEEDS_PER_ROUND))

    medians = {name: round(statistics.median(values), 2) for name, values in timings.items()}
    result = {
        "command": "python benchmarks/data_loading.py --data data/shapes",
        "preset": PRESET,
        "batch_size": config.data.batch_size,
        "image_size": config.data.image_size,
        "rounds": args.rounds,
        "batches_per_round": args.batches,
        "torch": torch.__version__,
        "median": medians,
        "manual_seed_cost_per_batch_ms": round(
            config.data.batch_size * (medians["manual_seed_us"] - medians["cpu_seed_us"]) / 1e3, 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_loading.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Training data loading",
        "",
        f"Regenerate: `{result['command']}`. Medians over {args.rounds} interleaved rounds; "
        f"batch {result['batch_size']}, {result['image_size']} px, torch {result['torch']}.",
        "",
        "| what | time |",
        "|---|---:|",
        f"| one training batch (read, flip, scale jitter, normalise, collate) | {medians['batch_ms']} ms |",
        f"| the same from decoded images cached in memory (default for splits under data.cache_mb) | "
        f"{medians['cached_batch_ms']} ms |",
        f"| seeding torch's CPU generator (what SeededAugmentation does per sample) | {medians['cpu_seed_us']} us |",
        f"| torch.manual_seed (all backends) | {medians['manual_seed_us']} us |",
        "",
        f"Seeding every sample with torch.manual_seed would add {result['manual_seed_cost_per_batch_ms']} ms a batch.",
    ]
    (RESULTS / "data_loading.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
