"""``make demo``: data -> teacher -> student baseline -> DETRDistill student -> one table.

Rows: the teacher; the undistilled student and the DETRDistill student trained for the
same number of steps with the same seed; and an undistilled student given as many steps as
cost what the distilled one's cost, by step times measured interleaved in one process (a
distill step also pays for the teacher's forward pass, so equal steps alone would flatter
distillation; a wall clock would count whatever else the machine ran). Every stage is skipped
when its run directory already holds a finished run, so a second demo reuses the teacher.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from detrdistill.bench.plan import same_time_steps
from detrdistill.bench.timing import interleaved_step_ms
from detrdistill.config import FAMILY_PRESETS, load_config
from detrdistill.runs import ensure_shapes, runs_table, train_or_reuse

TEACHER_PRESET = FAMILY_PRESETS["deformable_detr"].teacher
STUDENT_PRESET = FAMILY_PRESETS["deformable_detr"].student
# Distillation helps most while the student is young, and the demo must stay short.
STUDENT_STEPS = 1000


def preset_run(label: str, preset: str, data_dir: Path, run_dir: Path, steps: int | None = None,
               minutes: float | None = None, teacher: Path | None = None) -> dict:
    """``preset`` (with the given budget) trained into ``run_dir`` unless finished there: eval.json's dict."""
    config = load_config(preset)
    if steps is not None or minutes is not None:
        config.train.steps, config.train.minutes = steps, minutes
    return train_or_reuse(config, data_dir, run_dir, teacher=teacher, label=label)


def compare_runs(
    teacher_preset: str, student_preset: str, data_dir: Path, out_dir: Path, student_steps: int,
    teacher_dir: Path | None = None,
) -> dict[str, dict]:
    """Teacher, student (same steps), DETRDistill student, student (same time): eval dicts by row name.

    ``teacher_dir`` reuses a trained teacher; by default it is trained into ``out_dir/teacher``.
    """
    rows = {}
    if teacher_dir is None:
        teacher_dir = out_dir / "teacher"
        rows["teacher"] = preset_run("teacher", teacher_preset, data_dir, teacher_dir)
    else:
        rows["teacher"] = json.loads((teacher_dir / "eval.json").read_text())
    rows["student (same steps)"] = preset_run(
        "student", student_preset, data_dir, out_dir / "student", steps=student_steps
    )
    rows["DETRDistill student"] = preset_run(
        "DETRDistill student", student_preset, data_dir, out_dir / "distilled", steps=student_steps,
        teacher=teacher_dir,
    )
    # The same-time budget from step times measured together, not from the distilled run's
    # wall clock, which any other work on the machine stretches.
    config = load_config(student_preset)
    measured = interleaved_step_ms({"distilled": (config, teacher_dir), "student": (config, None)}, data_dir)
    rows["student (same time)"] = preset_run(
        "student, same time", student_preset, data_dir, out_dir / "student_same_time",
        steps=same_time_steps(student_steps, measured["distilled"], measured["student"]),
    )
    return rows


def run_demo(data_dir: Path, out_dir: Path, student_steps: int = STUDENT_STEPS) -> str:
    started = time.perf_counter()
    ensure_shapes(data_dir)
    rows = compare_runs(TEACHER_PRESET, STUDENT_PRESET, data_dir, out_dir, student_steps)
    table = runs_table(rows)
    gain = rows["DETRDistill student"]["AP"] - rows["student (same steps)"]["AP"]
    report = (
        "# detrdistill demo\n\n"
        f"Regenerate: `make demo` (or `detrdistill demo --data {data_dir} --out {out_dir}`).\n\n"
        f"Data: `{data_dir}`, val split. Teacher `{TEACHER_PRESET}`; students `{STUDENT_PRESET}` for "
        f"{student_steps} steps, seed 0.\n\n{table}\n\n"
        f"DETRDistill - student at equal steps: {100 * gain:+.1f} AP.\n\n"
        "AP columns x100; APs/APm/APl use area ranges scaled to the image size (README).\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(report)
    print(table)
    print(f"[demo] done in {(time.perf_counter() - started) / 60:.1f} min; report: {out_dir / 'report.md'}")
    return report
