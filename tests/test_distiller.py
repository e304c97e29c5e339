"""The DETRDistill objective: assignment distillation, frozen teacher, pairs of families, CLI."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForObjectDetection

from detrdistill.cli import main
from detrdistill.config import ConfigError, RunConfig, config_to_dict
from detrdistill.data.coco import CocoDetection
from detrdistill.distiller import DETRDistillObjective
from detrdistill.losses.assignment import AssignmentDistillation
from detrdistill.losses.detection import DetectionLoss
from detrdistill.models.adapters import adapter_for
from detrdistill.models.build import build_detector
from tests.conftest import TINY_ID2LABEL, make_tiny_model_config, make_tiny_run_config

TERMS = {"det_cls", "det_bbox", "det_giou", "ld_pos_cls", "ld_pos_box", "ld_neg_box", "fd", "ad_cls", "ad_bbox",
         "ad_giou"}


def tiny_pair(teacher_family, student_family, teacher_dim=64, teacher_queries=12, seed=0):
    """A wider teacher with more queries than the student, both perturbed off their init."""
    torch.manual_seed(seed)
    teacher_config = make_tiny_model_config(teacher_family)
    teacher_config.d_model, teacher_config.num_queries = teacher_dim, teacher_queries
    teacher = build_detector(teacher_config, TINY_ID2LABEL)
    student = build_detector(make_tiny_model_config(student_family), TINY_ID2LABEL)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return teacher, student


def batch(empty: bool = False):
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)
    pixel_mask[1, :, 48:] = 0
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])},
        {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]
    if empty:
        labels[0] = labels[1]
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": labels}


@pytest.mark.parametrize(
    "teacher_family,student_family",
    [("conditional_detr", "conditional_detr"), ("deformable_detr", "deformable_detr"),
     ("deformable_detr", "conditional_detr"), ("conditional_detr", "deformable_detr"), ("detr", "conditional_detr"),
     ("detr", "detr")],
)
def test_every_term_is_finite_and_trains_the_student_not_the_teacher(teacher_family, student_family):
    teacher, student = tiny_pair(teacher_family, student_family)
    objective = DETRDistillObjective(student, teacher, RunConfig())
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.AdamW(list(student.parameters()) + list(objective.heads.parameters()), lr=1e-3)
    terms = objective(batch())
    assert set(terms) == TERMS
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    assert all(p.grad is not None for p in objective.heads.parameters())


@pytest.mark.parametrize("empty", [False, True])
def test_no_nan_without_objects_or_teacher_positives(empty):
    teacher, student = tiny_pair("conditional_detr", "conditional_detr")
    objective = DETRDistillObjective(student, teacher, RunConfig())
    terms = objective(batch(empty=empty))
    total = sum(terms.values())
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    if empty:
        assert terms["ld_pos_cls"].item() == 0.0


def test_lambdas_scale_their_terms_and_switches_remove_them():
    teacher, student = tiny_pair("conditional_detr", "conditional_detr")
    torch.manual_seed(1)  # the same initial FD projection (teacher 64 wide, student 32) in both objectives
    base = DETRDistillObjective(student, teacher, RunConfig())(batch())
    config = RunConfig()
    config.distill.lambda_fd, config.distill.lambda_ld = 40.0, 2.0
    config.distill.assignment.enabled = False
    torch.manual_seed(1)
    scaled = DETRDistillObjective(student, teacher, config)(batch())
    assert "ad_cls" not in scaled
    assert scaled["ld_neg_box"].item() == pytest.approx(2 * base["ld_neg_box"].item(), rel=1e-5)
    assert scaled["fd"].item() == pytest.approx(2 * base["fd"].item(), rel=1e-4)


def test_assignment_distillation_uses_the_teachers_assignment_not_a_fresh_match():
    teacher, student = tiny_pair("conditional_detr", "conditional_detr")
    student_adapter, teacher_adapter = adapter_for(student), adapter_for(teacher)
    data = batch()
    criterion = DetectionLoss(RunConfig().loss, 3, "sigmoid")
    teacher_queries = teacher_adapter.learned_queries()
    assignment = AssignmentDistillation(teacher_queries.shape[1], student_adapter.learned_queries().shape[1])
    assert isinstance(assignment.query_map, torch.nn.Linear)
    # The teacher's (pretend) assignment: queries 7 and 11 hold the two objects at every stage.
    given = [(torch.tensor([7, 11]), torch.tensor([0, 1])), (torch.zeros(0).long(), torch.zeros(0).long())]
    teacher_gt = [given] * 3

    def no_fresh_match(*args, **kwargs):
        raise AssertionError("assignment distillation must not match afresh")

    fresh_matcher, criterion.matcher = criterion.matcher, no_fresh_match
    _, decoded = student_adapter.forward_with_group(
        data["pixel_values"], data["pixel_mask"], assignment.prior_queries(teacher_queries)
    )
    terms = assignment(decoded, teacher_gt, [0, 1, 2], data["labels"], criterion)
    assert set(terms) == {"ad_cls", "ad_bbox", "ad_giou"}

    expected, _ = criterion(decoded.logits, decoded.boxes_cxcywh, data["labels"], indices=teacher_gt)
    assert terms["ad_bbox"].item() == pytest.approx(expected["det_bbox"].item(), rel=1e-5)
    criterion.matcher = fresh_matcher
    fresh, fresh_indices = criterion(decoded.logits, decoded.boxes_cxcywh, data["labels"])
    assert fresh_indices[0][0][0].tolist() != [7, 11]  # a fresh match picks other queries ...
    assert fresh["det_bbox"].item() < terms["ad_bbox"].item()  # ... with a lower cost


def test_sigmoid_teacher_cannot_give_class_targets_to_a_softmax_student_but_box_only_ld_works():
    """The error's advice must work: with pos_cls off alone the class cost still needs class
    targets (this once passed construction and failed at step 1); box-only LD trains."""
    teacher, student = tiny_pair("conditional_detr", "detr")
    with pytest.raises(ConfigError, match="softmax-head"):
        DETRDistillObjective(student, teacher, RunConfig())
    config = RunConfig()
    config.distill.logits.pos_cls = False
    with pytest.raises(ConfigError, match="class_cost: 0"):
        DETRDistillObjective(student, teacher, config)
    config.distill.logits.class_cost = 0.0
    terms = DETRDistillObjective(student, teacher, config)(batch())
    assert all(torch.isfinite(value) for value in terms.values())
    assert terms["ld_pos_cls"].item() == 0.0 and terms["ld_neg_box"].item() > 0
    sum(terms.values()).backward()


def test_distill_cli_writes_a_plain_student_and_resumes(shapes_dir, tmp_path):
    shapes_labels = CocoDetection(shapes_dir, "train").id2label
    teacher_dir = tmp_path / "teacher"
    build_detector(make_tiny_model_config("deformable_detr"), shapes_labels).save_pretrained(teacher_dir)
    config = make_tiny_run_config("conditional_detr", steps=2, checkpoint_every=1)
    config_path = tmp_path / "student.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(config)))
    out = tmp_path / "distilled"
    args = ["distill", "--teacher", str(teacher_dir), "--config", str(config_path), "--data", str(shapes_dir),
            "--out", str(out)]
    assert main(args) == 0
    terms = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"ld_neg_box", "fd", "ad_cls"} <= set(terms)
    student = AutoModelForObjectDetection.from_pretrained(out / "model")
    assert student.config.model_type == "conditional_detr"
    assert not any("query_map" in name or "projections" in name for name, _ in student.named_parameters())
    assert main(args[:-2] + ["--out", str(out), "--steps", "3", "--resume"]) == 0
    assert json.loads((out / "eval.json").read_text())["steps"] == 3


def test_distill_cli_rejects_a_teacher_of_another_label_set(shapes_dir, tmp_path, capsys):
    teacher, _ = tiny_pair("conditional_detr", "conditional_detr")  # 3 classes; shapes has 6
    teacher.save_pretrained(tmp_path / "teacher")
    config_path = tmp_path / "student.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(make_tiny_run_config("conditional_detr", steps=1))))
    code = main(["distill", "--teacher", str(tmp_path / "teacher"), "--config", str(config_path), "--data",
                 str(shapes_dir), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "label set" in capsys.readouterr().err
