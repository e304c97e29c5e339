"""DETRDistill student vs the undistilled student, same steps and seed (and same time).

    python benchmarks/distill_gain.py --data data/shapes --family deformable_detr --steps 1500

Reuses the teacher trained by benchmarks/presets.py (runs/presets/<family>_teacher) and
finished runs. Writes benchmarks/results/distill_gain_<family>.json and .md. One seed:
benchmarks of issue 4 repeat this over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detrdistill.config import FAMILY_PRESETS
from detrdistill.demo import compare_runs
from detrdistill.runs import runs_table

RESULTS = Path(__file__).parent / "results"
PRESETS = {family: (FAMILY_PRESETS[family].teacher, FAMILY_PRESETS[family].student)
           for family in ("deformable_detr", "conditional_detr")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--family", choices=sorted(PRESETS), default="deformable_detr")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--runs", type=Path, default=Path("runs/distill_gain"))
    parser.add_argument("--teacher", type=Path, help="default: runs/presets/<family preset>_teacher")
    args = parser.parse_args()
    teacher_preset, student_preset = PRESETS[args.family]
    teacher = args.teacher or Path("runs/presets") / teacher_preset
    rows = compare_runs(teacher_preset, student_preset, args.data, args.runs / args.family, args.steps, teacher)
    command = (f"python benchmarks/distill_gain.py --data {args.data} --family {args.family} --steps {args.steps}"
               f" --teacher {teacher}")
    gain = rows["DETRDistill student"]["AP"] - rows["student (same steps)"]["AP"]
    gain_time = rows["DETRDistill student"]["AP"] - rows["student (same time)"]["AP"]
    record = {"command": command, "family": args.family, "steps": args.steps, "seed": 0, "teacher": str(teacher),
              "gain_same_steps": gain, "gain_same_time": gain_time, "rows": rows}
    (RESULTS / f"distill_gain_{args.family}.json").write_text(json.dumps(record, indent=2))
    text = (f"# DETRDistill vs undistilled student: {args.family}\n\nRegenerate: `{command}` (teacher from "
            "`benchmarks/presets.py`).\n\nEmbedded shapes data, val split (1000 images), seed 0, one run each. "
            f"AP x100.\n\n{runs_table(rows)}\n\n"
            f"- DETRDistill - student, same steps: {100 * gain:+.1f} AP\n"
            f"- DETRDistill - student, same wall-clock time: {100 * gain_time:+.1f} AP\n")
    (RESULTS / f"distill_gain_{args.family}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
