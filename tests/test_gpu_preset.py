"""benchmarks/gpu_preset.py end to end in --smoke mode: the script a lent GPU runs, checked on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_preset.py"


def test_gpu_preset_smoke_measures_both_pairs_and_runs_teacher_student_distill(shapes_dir, tmp_path):
    results = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--skip", "matching", "--data", str(shapes_dir),
         "--runs", str(tmp_path / "runs"), "--results", str(results)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((results / "gpu.json").read_text())
    assert result["card"]["device"] == "cpu" and "failed" not in result
    for family in ("conditional_detr", "deformable_detr"):
        cost = result[f"step_cost_{family}"]
        assert all(cost[kind]["median_ms"] > 0 for kind in ("student", "teacher_forward", "distill"))
        # A distill step runs the student step's work plus the teacher's and the distillation terms.
        assert cost["distill"]["median_ms"] > cost["student"]["median_ms"]
    runs = result["short_run"]
    assert [runs[name]["steps"] for name in ("teacher", "student", "detrdistill")] == [6, 4, 4]
    assert all(0.0 <= run["AP"] <= 1.0 for run in runs.values())
    assert json.loads((tmp_path / "runs" / "detrdistill" / "init.json").read_text())["teacher"] is not None
    page = (results / "gpu.md").read_text()
    assert "## A short run" in page and "gpu_deformable_teacher -> gpu_deformable_student" in page
