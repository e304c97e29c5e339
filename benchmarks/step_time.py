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
from pathlib import Path

import torch

from detrdistill.bench.timing import interleaved_ms, timed_run, training_batches
from detrdistill.config import FAMILY_PRESETS, load_config

RESULTS = Path(__file__).parent / "results"
PAIRS = [(p.teacher, p.student) for p in FAMILY_PRESETS.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    presets = [p for pair in PAIRS for p in pair]
    configs = {preset: load_config(preset) for preset in presets}
    train_set, batches = training_batches(args.data, configs[presets[0]])
    torch.manual_seed(0)
    calls = {}
    for preset, config in configs.items():
        run = timed_run(config, None, train_set)
        calls[f"{preset}/step"], calls[f"{preset}/forward"] = run.step, run.forward
    measured = interleaved_ms(calls, batches, args.rounds)
    batch_size = configs[presets[0]].data.batch_size

    result = {
        "command": "python benchmarks/step_time.py --data data/shapes",
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "median_step_ms": {p: round(measured[f"{p}/step"], 1) for p in presets},
        "median_forward_ms": {p: round(measured[f"{p}/forward"], 1) for p in presets},
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
