"""Where each family's undistilled student (or teacher) stops improving: one long run per
family with val AP at regular checkpoints, to choose the ``converged`` suite's S.

    python benchmarks/plateau.py --data data/shapes --steps conditional_detr=16000 deformable_detr=8000

The learning rate drops by 10x at 80 % of the budget (the presets' schedule), so a
checkpoint before the drop is not what a run of that length would reach: read the curve
for where it flattens before the drop, and the final point for what the drop adds. One
seed. Writes benchmarks/results/plateau_<role>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from detrdistill.bench.runner import read_checkpoints  # noqa: E402
from detrdistill.config import FAMILY_PRESETS, load_config  # noqa: E402
from detrdistill.overrides import apply_overrides  # noqa: E402
from detrdistill.runs import train_or_reuse  # noqa: E402
from detrdistill.training.machine_load import read_machine_load  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def family_steps(text: str) -> tuple[str, int]:
    family, _, steps = text.partition("=")
    if family not in FAMILY_PRESETS or not steps.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give FAMILY=STEPS with FAMILY one of {sorted(FAMILY_PRESETS)}")
    return family, int(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--steps", type=family_steps, nargs="+", required=True, metavar="FAMILY=STEPS")
    parser.add_argument("--role", choices=("student", "teacher"), default="student")
    parser.add_argument("--checkpoints", type=int, default=16, help="val evaluations per run")
    parser.add_argument("--runs", type=Path, default=Path("runs/plateau"))
    args = parser.parse_args()
    command = (f"python benchmarks/plateau.py --data {args.data} --role {args.role} --checkpoints {args.checkpoints} "
               "--steps " + " ".join(f"{f}={s}" for f, s in args.steps))
    curves = {}
    for family, steps in args.steps:
        preset = getattr(FAMILY_PRESETS[family], args.role)
        config = apply_overrides(load_config(preset), {
            "train.steps": steps, "train.minutes": None, "train.eval_every": max(1, steps // args.checkpoints),
            "train.eval_max_images": 300}, where=f"plateau {family}")
        run_dir = args.runs / f"{preset}-{steps}"
        print(f"[plateau] {family}: {preset} for {steps} steps into {run_dir}")
        evaluation = train_or_reuse(config, args.data, run_dir, label=f"{family} {args.role}")
        curves[family] = {"preset": preset, "steps": steps, "run_dir": str(run_dir), "final": evaluation,
                          "step_ms": evaluation["step_ms"], "machine_load": read_machine_load(run_dir),
                          "checkpoints": read_checkpoints(run_dir)}
    record = {"command": command, "role": args.role, "lr_drop_at": 0.8, "curves": curves}
    base = RESULTS / f"plateau_{args.role}"
    base.with_suffix(".json").write_text(json.dumps(record, indent=2))

    figure, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    lines = [f"# Where the {args.role} presets plateau", "", f"Regenerate: `{command}`", "",
             "One run per family, seed 0; AP x100 on the first 300 val images at checkpoints, the whole val split "
             "at the end. The LR drops 10x at 80 % of the budget (dashed line).", ""]
    for ax, (family, curve) in zip(axes[0], curves.items(), strict=True):
        points = curve["checkpoints"]
        ax.plot([p["step"] for p in points], [100 * p["AP"] for p in points], marker="o", markersize=3)
        ax.axvline(0.8 * curve["steps"], color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{family} ({curve['preset']})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("val AP (300 images)")
        lines += [f"## {family}", "", f"`{curve['preset']}`, {curve['steps']} steps at {curve['step_ms']} ms; "
                  f"final AP (1000 images) {100 * curve['final']['AP']:.1f}.", "",
                  "| step | " + " | ".join(str(p["step"]) for p in points) + " |",
                  "|---|" + "---:|" * len(points),
                  "| AP | " + " | ".join(f"{100 * p['AP']:.1f}" for p in points) + " |", ""]
    figure.tight_layout()
    figure.savefig(base.with_suffix(".png"), dpi=90)
    base.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
