"""The demo's comparison pipeline end to end on tiny presets."""

import yaml

from detrdistill.config import config_to_dict
from detrdistill.demo import compare_runs
from detrdistill.runs import runs_table
from tests.conftest import make_tiny_run_config


def test_compare_runs_trains_each_row_once_and_reuses_finished_runs(shapes_dir, tmp_path):
    presets = {}
    for name, family in (("teacher", "deformable_detr"), ("student", "conditional_detr")):
        presets[name] = tmp_path / f"{name}.yaml"
        presets[name].write_text(yaml.safe_dump(config_to_dict(make_tiny_run_config(family, steps=2))))
    out = tmp_path / "demo"
    rows = compare_runs(str(presets["teacher"]), str(presets["student"]), shapes_dir, out, student_steps=3)
    assert list(rows) == ["teacher", "student (same steps)", "DETRDistill student", "student (same time)"]
    assert rows["teacher"]["steps"] == 2
    assert rows["student (same steps)"]["steps"] == rows["DETRDistill student"]["steps"] == 3
    assert (out / "distilled" / "init.json").read_text().count("teacher") >= 1
    table = runs_table(rows)
    assert "DETRDistill student" in table and "step_ms" in table

    stamp = (out / "student" / "eval.json").stat().st_mtime_ns
    again = compare_runs(str(presets["teacher"]), str(presets["student"]), shapes_dir, out, student_steps=3)
    assert (out / "student" / "eval.json").stat().st_mtime_ns == stamp
    assert again["DETRDistill student"]["AP"] == rows["DETRDistill student"]["AP"]
