"""Train every teacher/student preset on the embedded data and record AP, time and step cost.

    python benchmarks/presets.py --data data/shapes --runs runs/presets

Each preset trains at its default budget through the real CLI, from a fresh backbone
cache so backbone pretraining is part of the measured wall time. Finished runs (with an
eval.json) are not redone. Writes benchmarks/results/presets/<preset>.json and
benchmarks/results/presets.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from detrdistill.config import FAMILY_PRESETS

RESULTS = Path(__file__).parent / "results"
PAIRS = {family: (p.teacher, p.student) for family, p in FAMILY_PRESETS.items()}
# Acceptance (issue 2; AdaMixer: issue 6): teacher AP floors, a student this far below its teacher.
TEACHER_AP_FLOOR = {"deformable_teacher": 0.50, "conditional_teacher": 0.40,
                    "adamixer_teacher": 0.50}
MIN_AP_GAP = 0.10
MIN_SPEEDUP = 2.0
WALL_LIMIT_MIN = 20.0


def run_preset(preset: str, data: Path, runs: Path) -> dict:
    run_dir = runs / preset
    result_file = RESULTS / "presets" / f"{preset}.json"
    command = [sys.executable, "-m", "detrdistill.cli", "train", "--config", preset, "--data", str(data),
               "--out", str(run_dir), "--backbone-cache", str(run_dir / "backbone_cache")]
    if (run_dir / "eval.json").is_file() and result_file.is_file():
        return json.loads(result_file.read_text())
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall_min = (time.perf_counter() - started) / 60
    evaluation = json.loads((run_dir / "eval.json").read_text())
    init = json.loads((run_dir / "init.json").read_text())
    record = {
        "preset": preset,
        "command": " ".join(["python -m detrdistill.cli"] + command[3:]),
        "wall_minutes_including_backbone_pretraining": round(wall_min, 2),
        "backbone_pretraining_s": init.get("load_or_pretrain_s"),
        "backbone_crop_accuracy": init.get("val_accuracy"),
        **evaluation,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(record, indent=2))
    return record


def summary(records: dict[str, dict]) -> str:
    lines = [
        "# Preset baselines on the embedded shapes data",
        "",
        "Regenerate: `python benchmarks/presets.py --data data/shapes --runs runs/presets` "
        "(data from `detrdistill make-shapes data/shapes`).",
        "",
        "Val split of 1000 images, 128 px. AP x100; APs/APm/APl use area ranges scaled to the "
        "image size (16 px / 48 px sides at 128 px). Wall time includes backbone pretraining.",
        "",
        "| preset | AP | AP50 | AP75 | APs | APm | APl | steps | step ms | wall min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in records.items():
        aps = " | ".join(f"{100 * r[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
        lines.append(f"| {name} | {aps} | {r['steps']} | {r['step_ms']:.0f} | "
                     f"{r['wall_minutes_including_backbone_pretraining']:.1f} |")
    lines += ["", "## Acceptance checks (issue 2; AdaMixer: issue 6)", ""]
    same_process = step_ratios_in_one_process()
    for teacher, student in PAIRS.values():
        if teacher not in records or student not in records:
            continue
        t, s = records[teacher], records[student]
        floor = TEACHER_AP_FLOOR[teacher]
        ratio = same_process.get(f"{teacher}/{student}")
        ratio_source = "one process, step_time.json" if ratio else "separate runs"
        ratio = ratio or t["step_ms"] / s["step_ms"]
        checks = [
            (f"{teacher} AP {t['AP']:.3f} >= {floor}", t["AP"] >= floor),
            (f"{teacher} wall {t['wall_minutes_including_backbone_pretraining']:.1f} min <= {WALL_LIMIT_MIN}",
             t["wall_minutes_including_backbone_pretraining"] <= WALL_LIMIT_MIN),
            (f"step time {teacher} / {student} = {ratio:.2f} ({ratio_source}) >= {MIN_SPEEDUP}",
             ratio >= MIN_SPEEDUP),
            (f"AP gap {teacher} - {student} = {t['AP'] - s['AP']:.3f} >= {MIN_AP_GAP}",
             t["AP"] - s["AP"] >= MIN_AP_GAP),
        ]
        lines += [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    lines += ["", "The step ms column comes from each preset's own run (machine speed drifts between "
              "runs); the speed checks use `benchmarks/step_time.py`, which interleaves teacher and "
              "student steps in one process (step_time.md), when it has the pair."]
    return "\n".join(lines) + "\n"


def step_ratios_in_one_process() -> dict[str, float]:
    """teacher/student step-time ratios from step_time.json ({} when it was not run)."""
    path = RESULTS / "step_time.json"
    return json.loads(path.read_text()).get("teacher_over_student_step", {}) if path.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--runs", type=Path, default=Path("runs/presets"))
    parser.add_argument("--only", nargs="*", help="presets to run (default: all of them)")
    args = parser.parse_args()
    presets = args.only or [p for pair in PAIRS.values() for p in pair]
    records = {}
    for preset in presets:
        records[preset] = run_preset(preset, args.data, args.runs)
    for existing in sorted((RESULTS / "presets").glob("*.json")):
        records.setdefault(existing.stem, json.loads(existing.read_text()))
    order = [p for pair in PAIRS.values() for p in pair if p in records]
    text = summary({p: records[p] for p in order})
    (RESULTS / "presets.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
