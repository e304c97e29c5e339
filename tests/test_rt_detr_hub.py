"""Hub RT-DETR and D-FINE checkpoints as ``--teacher`` and as ``model.pretrained``.

Built locally in the hub's layout (no network): the hub's own backbones (RTDetrResNet,
HGNetV2), 80 COCO classes numbered 0..79, anchors fixed to 640 x 640, the hub's processor
beside the weights; the shapes dataset's six classes are among the 80, by name.
"""

import json

import pytest
import torch
import yaml
from transformers import (
    AutoModelForObjectDetection,
    DFineConfig,
    DFineForObjectDetection,
    HGNetV2Config,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrImageProcessor,
    RTDetrResNetConfig,
)

from detrdistill.cli import main
from detrdistill.config import config_to_dict
from detrdistill.data.coco import CocoDetection
from tests.conftest import make_tiny_run_config

LEVELS = ["stage2", "stage3", "stage4"]
WIDTHS = dict(d_model=32, encoder_hidden_dim=32, decoder_in_channels=[32, 32, 32], encoder_ffn_dim=64,
              decoder_ffn_dim=64, encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10,
              decoder_layers=3, decoder_n_points=2, num_denoising=20, anchor_image_size=[640, 640])


def hub_layout_checkpoint(family: str, names: list[str], where):
    """A tiny ``family`` checkpoint as the hub has them, saved to ``where`` with its processor."""
    hub_labels = {i: f"coco_{i}" for i in range(80)}
    for slot, name in zip((0, 2, 15, 39, 56, 79), names, strict=True):
        hub_labels[slot] = name
    if family == "rt_detr":
        backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                      layer_type="basic", out_features=LEVELS)
        config = RTDetrConfig(backbone_config=backbone, encoder_in_channels=[16, 32, 64], id2label=hub_labels,
                              **WIDTHS)
        model_class = RTDetrForObjectDetection
    else:
        backbone = HGNetV2Config(
            embedding_size=8, depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], stem_channels=[3, 8, 8],
            stage_in_channels=[8, 16, 32, 64], stage_mid_channels=[8, 8, 16, 16],
            stage_out_channels=[16, 32, 64, 128], stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[1, 1, 1, 1],
            out_features=LEVELS,
        )
        config = DFineConfig(backbone_config=backbone, encoder_in_channels=[32, 64, 128], id2label=hub_labels,
                             **WIDTHS)
        model_class = DFineForObjectDetection
    torch.manual_seed(0)
    model = model_class(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(where)
    RTDetrImageProcessor().save_pretrained(where)  # the hub's: 640 x 640, no normalisation
    return where


def write_config(config, path):
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    return path


@pytest.mark.parametrize("teacher_family,student_family", [("rt_detr", "d_fine"), ("d_fine", "rt_detr")])
def test_a_hub_checkpoint_teaches(shapes_dir, tmp_path, teacher_family, student_family):
    names = [c["name"] for c in CocoDetection(shapes_dir, "train").categories]
    teacher_dir = hub_layout_checkpoint(teacher_family, names, tmp_path / "hub_teacher")
    config_path = write_config(make_tiny_run_config(student_family, steps=2), tmp_path / "student.yaml")
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher_dir), "--config", str(config_path), "--data", str(shapes_dir),
                 "--out", str(out)]) == 0
    terms = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"ld_neg_box", "fd", "ad_cls", "det_dn_bbox"} <= set(terms)
    student = AutoModelForObjectDetection.from_pretrained(out / "model")
    assert student.config.model_type == student_family and student.config.num_labels == len(names)
    assert (out / "model" / "preprocessor_config.json").is_file()
    assert "## Teacher" in (out / "model" / "README.md").read_text()


@pytest.mark.parametrize("family", ["rt_detr", "d_fine"])
def test_a_hub_checkpoint_starts_a_run(shapes_dir, tmp_path, family):
    names = [c["name"] for c in CocoDetection(shapes_dir, "train").categories]
    hub_dir = hub_layout_checkpoint(family, names, tmp_path / "hub")
    config = make_tiny_run_config(family, steps=2)
    config.model.pretrained = str(hub_dir)
    out = tmp_path / "run"
    assert main(["train", "--config", str(write_config(config, tmp_path / "run.yaml")), "--data", str(shapes_dir),
                 "--out", str(out)]) == 0
    trained = AutoModelForObjectDetection.from_pretrained(out / "model")
    assert trained.config.id2label == {i: name for i, name in enumerate(names)}
    assert trained.model.enc_score_head.out_features == len(names)
    assert trained.config.anchor_image_size is None  # 64 px images, not the hub's 640
    hub = AutoModelForObjectDetection.from_pretrained(hub_dir)
    backbone_type = type(hub.model.backbone.model)
    assert type(trained.model.backbone.model) is backbone_type  # its own backbone, not ours
    assert "AP" in json.loads((out / "eval.json").read_text())
