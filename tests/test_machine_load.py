"""The machine-load record: another busy process is named, the run's own processes are not."""

import json
import subprocess
import sys
import time

import yaml

from detrdistill.cli import main
from detrdistill.config import config_to_dict
from detrdistill.training import machine_load
from detrdistill.training.machine_load import MACHINE_LOAD_NAME, LoadMonitor, read_machine_load
from tests.conftest import make_tiny_run_config

SPIN = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"


def test_a_busy_process_that_is_not_the_run_is_named(monkeypatch):
    # A child stands in for a neighbour: the run is told that only this process is its own.
    monkeypatch.setattr(machine_load, "_own_processes", lambda: {machine_load.os.getpid()})
    monitor = LoadMonitor()
    neighbour = subprocess.Popen([sys.executable, "-c", SPIN])
    time.sleep(1.2)
    summary = monitor.summary()
    neighbour.wait()
    assert summary["shared"] and neighbour.pid in [b["pid"] for b in summary["busy_processes"]]
    assert summary["cores"] >= 1 and summary["load1_max"] is not None


def test_the_runs_own_children_do_not_count():
    monitor = LoadMonitor()
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    time.sleep(1.2)
    summary = monitor.summary()
    child.wait()
    assert child.pid not in [b["pid"] for b in summary["busy_processes"]]


def test_training_writes_a_load_line_per_part_outside_eval_json(shapes_dir, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(make_tiny_run_config("conditional_detr", steps=2))))
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--data", str(shapes_dir), "--out", str(out)]) == 0
    assert main(["train", "--config", str(path), "--data", str(shapes_dir), "--out", str(out), "--steps", "3",
                 "--resume"]) == 0
    lines = [json.loads(line) for line in (out / MACHINE_LOAD_NAME).read_text().splitlines()]
    assert [line["steps"] for line in lines] == [[0, 2], [2, 3]]
    assert "machine_load" not in json.loads((out / "eval.json").read_text())
    assert read_machine_load(out)["parts"] == 2 and read_machine_load(tmp_path) is None
