"""The per-term gradient diagnostic: hand-computed norms and cosines, parameter groups of every
family, a training run it leaves unchanged, and ``detrdistill diagnose``."""

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from detrdistill.analysis.gradients import cosine_series, gradient_lines, norm_series, plot_gradients, summarise
from detrdistill.cli import main, parse_set_options
from detrdistill.config import ConfigError, config_to_dict
from detrdistill.data.coco import CocoDetection
from detrdistill.models.build import build_detector
from detrdistill.training import grad_diagnostic
from detrdistill.training.grad_diagnostic import gradient_diagnostic, group_parameters, parameter_group
from tests.conftest import make_tiny_model_config, make_tiny_run_config


class TwoGroups(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 1, bias=False)
        self.class_embed = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor([[1.0, 2.0]]))
            self.class_embed.weight.fill_(3.0)


def test_norms_and_cosines_by_hand():
    model = TwoGroups()
    a, h = model.backbone.weight, model.class_embed.weight
    terms = {
        "det_cls": a.sum() + h.sum(),  # d/da = (1, 1); d/dh = 1
        "det_bbox": 0.0 * a.sum(),  # same component as det_cls: summed into "det"
        "fd": (a**2).sum(),  # d/da = (2, 4); none on the heads
        "ld_pos_cls": -(a[0, 0] * 1.0) + 2 * h.sum(),  # d/da = (-1, 0); d/dh = 2
    }
    head, other_head = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)  # FD's projection, AD's map
    with torch.no_grad():
        head.weight.fill_(1.0)
        other_head.weight.fill_(1.0)
    terms["fd"] = terms["fd"] + 3 * head.weight.sum()  # d/d(head) = 3
    terms["ad_cls"] = 4 * other_head.weight.sum()  # each head reached by one component only
    result = gradient_diagnostic(terms, group_parameters(model, [head, other_head]))
    norm, cosine = result["grad_norm"], result["grad_cosine"]
    assert norm["fd"]["distill_heads"] == pytest.approx(3.0) and norm["det"]["distill_heads"] == 0.0
    assert norm["ad"]["distill_heads"] == pytest.approx(4.0) and cosine["distill_heads"]["fd|ad"] == 0.0
    assert norm["det"]["backbone"] == pytest.approx(math.sqrt(2))
    assert norm["fd"]["backbone"] == pytest.approx(math.sqrt(20))
    assert norm["fd"]["heads"] == 0.0
    assert norm["ld"]["heads"] == pytest.approx(2.0)
    assert cosine["backbone"]["det|fd"] == pytest.approx(6 / math.sqrt(40))
    assert cosine["backbone"]["det|ld"] == pytest.approx(-1 / math.sqrt(2))
    assert cosine["heads"]["det|ld"] == pytest.approx(1.0)
    assert cosine["heads"]["det|fd"] is None  # FD has no gradient on the heads
    assert a.grad is None and h.grad is None  # nothing accumulated: the run's own backward is untouched


@pytest.mark.parametrize("family", ["detr", "conditional_detr", "deformable_detr", "adamixer"])
def test_every_family_has_all_four_groups_and_its_heads_are_heads(family):
    config = make_tiny_model_config("deformable_detr" if family == "adamixer" else family)
    config.family = family
    model = build_detector(config, {0: "a", 1: "b", 2: "c"})
    groups = group_parameters(model)
    assert list(groups) == ["backbone", "encoder", "decoder", "heads"]
    assert sum(len(p) for p in groups.values()) == sum(1 for p in model.parameters() if p.requires_grad)
    names = {name: parameter_group(name) for name, _ in model.named_parameters()}
    assert all(group == "heads" for name, group in names.items() if "class_" in name)
    assert all(group == "backbone" for name, group in names.items() if "backbone" in name.split(".")[:2])


def _distill(shapes_dir, tmp_path, name, every):
    teacher_dir = tmp_path / "teacher"
    if not teacher_dir.is_dir():
        torch.manual_seed(0)
        labels = CocoDetection(shapes_dir, "train").id2label
        build_detector(make_tiny_model_config("conditional_detr"), labels).save_pretrained(teacher_dir)
    config = make_tiny_run_config("conditional_detr", steps=4, grad_diagnostic_every=every)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    out = tmp_path / name
    assert main(["distill", "--teacher", str(teacher_dir), "--config", str(path), "--data", str(shapes_dir),
                 "--out", str(out)]) == 0
    return out


def test_diagnostic_leaves_the_run_unchanged_and_diagnose_reports_it(shapes_dir, tmp_path, capsys, monkeypatch):
    calls = []
    real = grad_diagnostic.gradient_diagnostic
    monkeypatch.setattr("detrdistill.training.loop.gradient_diagnostic",
                        lambda *a: calls.append(1) or real(*a))
    plain = _distill(shapes_dir, tmp_path, "plain", every=0)
    assert calls == []  # off: never called, so no extra backward pass
    diagnosed = _distill(shapes_dir, tmp_path, "diagnosed", every=2)
    assert len(calls) == 2
    weights_plain = load_file(plain / "model" / "model.safetensors")
    weights_diagnosed = load_file(diagnosed / "model" / "model.safetensors")
    assert all(torch.equal(weights_plain[k], weights_diagnosed[k]) for k in weights_plain)

    lines = gradient_lines(diagnosed)
    assert [line["step"] for line in lines] == [2, 4]
    assert set(lines[0]["grad_norm"]) == {"det", "ld", "fd", "ad"}
    assert lines[0]["grad_norm"]["fd"]["heads"] == 0.0 and lines[0]["grad_norm"]["fd"]["encoder"] > 0
    assert "distill_heads" not in lines[0]["grad_norm"]["fd"]  # equal widths: FD's projection is the identity
    logged = [json.loads(line) for line in (diagnosed / "metrics.jsonl").read_text().splitlines()]
    assert all(line["grad_total_norm"] > 0 for line in logged if "loss" in line)  # the pre-clip norm, each log
    summary = summarise(lines)
    assert summary["norm"]["ld"]["decoder"] == pytest.approx(
        (lines[0]["grad_norm"]["ld"]["decoder"] + lines[1]["grad_norm"]["ld"]["decoder"]) / 2)

    figure = plot_gradients(lines)
    columns = len(figure.axes) // 2  # two rows of one panel per group, encoder second
    encoder_norms, encoder_cosines = figure.axes[1], figure.axes[columns + 1]
    assert encoder_norms.get_title() == "encoder" and columns == 4
    plotted = {line.get_label(): list(line.get_ydata()) for line in encoder_norms.get_lines()}
    assert plotted["fd"] == pytest.approx(list(norm_series(lines, "fd", "encoder")))
    cosines = {line.get_label(): list(line.get_ydata()) for line in encoder_cosines.get_lines()}
    assert cosines["det/fd"] == pytest.approx(list(cosine_series(lines, "det|fd", "encoder")))

    capsys.readouterr()
    assert main(["diagnose", str(diagnosed)]) == 0
    printed = capsys.readouterr().out
    assert "| fd |" in printed and "| det / fd |" in printed and "ms per diagnosed step" in printed
    assert (diagnosed / "gradients.png").stat().st_size > 0
    assert main(["diagnose", str(plain)]) == 2
    assert "grad_diagnostic_every" in capsys.readouterr().err
    logs = [json.loads(line) for line in (diagnosed / "metrics.jsonl").read_text().splitlines()]
    assert all("loss" in line for line in logs if "grad_norm" not in line and "eval" not in line)


def test_set_options_are_yaml_values_and_reach_the_config(shapes_dir, tmp_path):
    assert parse_set_options(["train.steps=3", "distill.features.mask=paper", "distill.lambda_fd=0.5"]) == {
        "train.steps": 3, "distill.features.mask": "paper", "distill.lambda_fd": 0.5}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(["train.steps"])
    out = _distill(shapes_dir, tmp_path, "base", every=0)
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--config", str(tmp_path / "base.yaml"),
                 "--data", str(shapes_dir), "--out", str(tmp_path / "set"), "--steps", "1",
                 "--set", "distill.features.mask=paper", "--set", "distill.lambda_fd=0.5"]) == 0
    written = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    assert written["distill"]["features"]["mask"] == "paper" and written["distill"]["lambda_fd"] == 0.5
    assert out.is_dir()
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--config", str(tmp_path / "base.yaml"),
                 "--data", str(shapes_dir), "--out", str(tmp_path / "bad"), "--set", "distill.features.mask=x"]) == 2
