"""``make demo``: embedded data -> pretrained backbone -> teacher -> COCO AP table.

Each stage is skipped when its output already exists, so a second demo reuses the data
and the trained teacher. Issue 3 extends this to the student and the distilled student.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from detrdistill.config import load_config
from detrdistill.evaluate import format_ap_table

TEACHER_PRESET = "deformable_teacher"


def ensure_shapes(data_dir: Path) -> None:
    from detrdistill.data.shapes import make_shapes

    if (data_dir / "annotations" / "instances_val.json").is_file():
        print(f"[demo] data: reusing {data_dir}")
        return
    print(f"[demo] data: generating the embedded shapes set in {data_dir} (about 40 s)")
    make_shapes(data_dir)


def train_or_reuse(preset: str, data_dir: Path, run_dir: Path) -> dict:
    from detrdistill.training.loop import DetectionObjective, fit, seed_everything
    from detrdistill.training.prepare import default_backbone_cache, load_datasets, prepare_detector

    eval_file = run_dir / "eval.json"
    if eval_file.is_file():
        print(f"[demo] {run_dir.name}: reusing the trained run in {run_dir}")
        return json.loads(eval_file.read_text())
    config = load_config(preset)
    seed_everything(config.train.seed)
    train_set, val_set = load_datasets(data_dir, config.data)
    print(f"[demo] {run_dir.name}: preset {preset}, {config.train.steps} steps (progress bar shows the ETA)")
    model, init = prepare_detector(config, train_set, default_backbone_cache(data_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "init.json").write_text(json.dumps(init, indent=2))
    resume = (run_dir / "checkpoint.pt").is_file()
    return fit(DetectionObjective(model, config), model, config, train_set, val_set, run_dir, resume=resume)


def run_demo(data_dir: Path, out_dir: Path) -> str:
    started = time.perf_counter()
    ensure_shapes(data_dir)
    rows = {"teacher": train_or_reuse(TEACHER_PRESET, data_dir, out_dir / "teacher")}
    table = format_ap_table({name: {k: rows[name][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "step_ms")}
                             for name in rows})
    report = (
        f"# detrdistill demo\n\nData: `{data_dir}` (val split). Teacher preset: `{TEACHER_PRESET}`.\n\n{table}\n\n"
        "AP columns x100; APs/APm/APl use area ranges scaled to the image size (see README).\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(report)
    print(table)
    print(f"[demo] done in {(time.perf_counter() - started) / 60:.1f} min; report: {out_dir / 'report.md'}")
    return report
