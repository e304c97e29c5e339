"""Run directories: a finished run is never overwritten, --resume continues the recorded run or
refuses, a half-written metrics line or a full disk does not make a run unresumable."""

import json

import pytest
import torch
import yaml

from detrdistill.cli import main
from detrdistill.config import config_to_dict
from detrdistill.training.checkpoint import CHECKPOINT_NAME, save_checkpoint
from detrdistill.training.run_dir import run_dir_state
from tests.conftest import make_tiny_run_config


@pytest.fixture
def run(shapes_dir, tmp_path):
    """A finished 2-step run and the command that made it."""
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(make_tiny_run_config("conditional_detr", steps=2))))
    out = tmp_path / "run"
    args = ["train", "--config", str(config_path), "--data", str(shapes_dir), "--out", str(out)]
    assert main(args) == 0
    return out, args


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_finished_run_without_its_checkpoint_is_never_overwritten(run, capsys):
    out, args = run
    (out / CHECKPOINT_NAME).unlink()  # the natural clean-up
    assert run_dir_state(out) == "finished"
    before = _snapshot(out)
    assert main(args) == 2
    assert "already holds a finished run (eval.json, model/)" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 2
    assert "checkpoint.pt is gone" in capsys.readouterr().err
    assert _snapshot(out) == before


@pytest.mark.parametrize("contents", ["missing", "empty", "config only"])
def test_resume_with_nothing_to_resume_is_refused(run, tmp_path, capsys, contents):
    _, args = run
    out = tmp_path / "other"
    if contents != "missing":
        out.mkdir()
    if contents == "config only":
        (out / "config.yaml").write_text("{}\n")
    assert main([*args[:-1], str(out), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (out / "model").exists()


@pytest.mark.parametrize("flags,named", [
    (["--seed", "7"], "train.seed: recorded 0, now 7"),
    (["--set", "train.lr=0.01"], "train.lr"),
    (["--set", "model.d_model=48"], "model.d_model: recorded 32, now 48"),
])
def test_resume_with_another_config_is_refused_naming_what_differs(run, capsys, flags, named):
    out, args = run
    before = _snapshot(out)
    assert main([*args, "--steps", "3", "--resume", *flags]) == 2
    error = capsys.readouterr().err
    assert named in error and "--resume continues the run recorded" in error
    assert _snapshot(out) == before  # config.yaml not rewritten, nothing trained


def test_a_longer_budget_resumes(run):
    out, args = run
    assert main([*args, "--steps", "3", "--resume"]) == 0
    assert json.loads((out / "eval.json").read_text())["steps"] == 3


def test_a_half_written_metrics_line_is_dropped_on_resume(shapes_dir, tmp_path):
    config = make_tiny_run_config("conditional_detr", steps=4, checkpoint_every=2)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(config)))
    out = tmp_path / "run"
    args = ["train", "--config", str(config_path), "--data", str(shapes_dir), "--out", str(out)]
    assert main([*args, "--steps", "2"]) == 0
    # Drop the finished run's final files so that it is an interrupted one, cut mid-line.
    (out / "eval.json").unlink()
    for path in (out / "model").iterdir():
        path.unlink()
    (out / "model").rmdir()
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 1.')
    assert main([*args, "--steps", "4", "--resume"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]


def test_a_full_disk_during_a_checkpoint_write_is_named_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(path, {"model": model}, optimizer, 1, 1.0)
    good = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="is it full"):
        save_checkpoint(path, {"model": model}, optimizer, 2, 2.0)
    assert path.read_bytes() == good and not path.with_name(path.name + ".tmp").exists()
