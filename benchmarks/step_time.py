"""Per-step training time of each preset, measured in one process on the same batches.

    python benchmarks/step_time.py --data data/shapes

Machines are noisy, so teacher and student steps are interleaved round by round and the
ratio is taken from medians of the same run; the three families' presets side by side give
their relative per-step speed on this machine. Writes benchmarks/results/step_time.json and
step_time.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from detrdistill.config import FAMILY_PRESETS, load_config
from detrdistill.data.collate import collate_detection
from detrdistill.models.build import build_detector
from detrdistill.training.loop import DetectionObjective
from detrdistill.training.optim import build_optimizer
from detrdistill.training.prepare import load_datasets

RESULTS = Path(__file__).parent / "results"
PAIRS = [(p.teacher, p.student) for p in FAMILY_PRESETS.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)

    presets = [p for pair in PAIRS for p in pair]
    objectives, optimizers, batch_size = {}, {}, None
    for preset in presets:
        config = load_config(preset)
        train_set, _ = load_datasets(args.data, config.data)
        model = build_detector(config.model, train_set.id2label).train()
        objectives[preset] = DetectionObjective(model, config)
        optimizers[preset] = build_optimizer(model, config.train)
        batch_size = config.data.batch_size
    batches = [collate_detection([train_set[i * batch_size + j] for j in range(batch_size)]) for i in range(4)]

    step_s = {p: [] for p in presets}
    forward_s = {p: [] for p in presets}
    for round_index in range(args.rounds + 2):  # the first two rounds warm up allocators
        batch = batches[round_index % len(batches)]
        for preset in presets:
            objective, optimizer = objectives[preset], optimizers[preset]
            started = time.perf_counter()
            loss = sum(objective(batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            elapsed = time.perf_counter() - started
            with torch.no_grad():
                started = time.perf_counter()
                objective.adapter(batch["pixel_values"], batch["pixel_mask"])
                forward = time.perf_counter() - started
            if round_index >= 2:
                step_s[preset].append(elapsed)
                forward_s[preset].append(forward)

    result = {
        "command": "python benchmarks/step_time.py --data data/shapes",
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "median_step_ms": {p: round(1000 * statistics.median(v), 1) for p, v in step_s.items()},
        "median_forward_ms": {p: round(1000 * statistics.median(v), 1) for p, v in forward_s.items()},
    }
    result["teacher_over_student_step"] = {
        f"{t}/{s}": round(result["median_step_ms"][t] / result["median_step_ms"][s], 2) for t, s in PAIRS
    }
    (RESULTS / "step_time.json").write_text(json.dumps(result, indent=2))
    lines = ["# Training step time per preset (one process, interleaved)", "",
             f"Regenerate: `{result['command']}`. Batch {batch_size}, {result['threads']} CPU threads, "
             f"torch {torch.__version__}; medians of {args.rounds} rounds.", "",
             "| preset | train step ms | no-grad forward ms |", "|---|---:|---:|"]
    lines += [f"| {p} | {result['median_step_ms'][p]} | {result['median_forward_ms'][p]} |" for p in presets]
    lines += ["", "| pair | teacher step / student step |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in result["teacher_over_student_step"].items()]
    (RESULTS / "step_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
