"""The DETRDistill objective with RT-DETR and D-FINE: pairs among them and with Deformable DETR,
the denoising queries kept out of every distillation term, the proposal stage, the query prior."""

import copy

import pytest
import torch

from detrdistill.config import ConfigError, RunConfig
from detrdistill.distiller import DETRDistillObjective
from detrdistill.losses.assignment import AssignmentDistillation
from detrdistill.losses.features import FeatureDistillation
from detrdistill.losses.logits import LogitsDistillation
from detrdistill.models.adapters import adapter_for
from detrdistill.training.loop import DetectionObjective
from tests.test_adamixer import tiny_adamixer
from tests.test_distiller import TERMS, batch, tiny_pair

DENOISING_TERMS = {"det_dn_cls", "det_dn_bbox", "det_dn_giou"}
PROPOSAL_FAMILIES = {"rt_detr", "rt_detr_v2", "d_fine"}


@pytest.mark.parametrize(
    "teacher_family,student_family",
    [("rt_detr", "rt_detr"), ("d_fine", "d_fine"), ("rt_detr", "d_fine"), ("d_fine", "rt_detr"),
     ("rt_detr_v2", "rt_detr"), ("deformable_detr", "rt_detr"), ("rt_detr", "conditional_detr")],
)
def test_every_term_is_finite_and_trains_the_student_not_the_teacher(teacher_family, student_family):
    teacher, student = tiny_pair(teacher_family, student_family)
    student.train()
    objective = DETRDistillObjective(student, teacher, RunConfig())
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.AdamW(list(student.parameters()) + list(objective.heads.parameters()), lr=1e-3)
    terms = objective(batch())
    assert set(terms) == TERMS | (DENOISING_TERMS if student_family in PROPOSAL_FAMILIES else set())
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    if student_family in PROPOSAL_FAMILIES:  # the proposal head learns from the detection loss
        assert student.model.enc_score_head.weight.grad.abs().sum() > 0
        assert student.model.enc_bbox_head.layers[0].weight.grad.abs().sum() > 0
    if student_family == "d_fine":  # and the first guess from D-FINE's stage 0
        assert student.model.decoder.pre_bbox_head.layers[0].weight.grad.abs().sum() > 0
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    assert all(p.grad is not None for p in objective.heads.parameters())


@pytest.mark.parametrize("student_family", ["rt_detr", "d_fine"])
def test_denoising_queries_enter_no_distillation_term(student_family, monkeypatch):
    """The student trains with denoising groups (their own loss terms), but LD, FD and AD see
    the object queries alone: Q student queries, the teacher's M in the prior group."""
    teacher, student = tiny_pair("rt_detr", student_family)
    student.train()
    objective = DETRDistillObjective(student, teacher, RunConfig())
    seen = {}

    def spy(name, method):
        def wrapped(*args, **kwargs):
            seen.setdefault(name, []).append((args, kwargs))
            return method(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(LogitsDistillation, "__call__", spy("ld", LogitsDistillation.__call__))
    monkeypatch.setattr(FeatureDistillation, "forward", spy("fd", FeatureDistillation.forward))
    monkeypatch.setattr(AssignmentDistillation, "forward", spy("ad", AssignmentDistillation.forward))
    terms = objective(batch())
    assert DENOISING_TERMS <= set(terms) and terms["det_dn_bbox"] > 0  # denoising did run

    student_queries, teacher_queries = student.config.num_queries, teacher.config.num_queries
    (ld_args, _), = seen["ld"]
    student_logits, student_boxes, teacher_logits, teacher_boxes, _ = ld_args[1:]
    assert student_logits.shape[2] == student_boxes.shape[2] == student_queries
    assert teacher_logits.shape[2] == teacher_boxes.shape[2] == teacher_queries
    (fd_args, _), = seen["fd"]
    student_record, teacher_record = fd_args[1:3]
    assert student_record.logits.shape[2] == student_record.decoder_hidden.shape[2] == student_queries
    assert student_record.denoising is not None and teacher_record.denoising is None
    assert teacher_record.decoder_hidden.shape[2] == teacher_queries
    (ad_args, _), = seen["ad"]
    prior_group = ad_args[1]
    assert prior_group.logits.shape[2] == prior_group.boxes_cxcywh.shape[2] == teacher_queries


def test_detection_objective_supervises_proposals_and_denoising(tiny_detector):
    model = tiny_detector("d_fine", perturb=0.1).train()
    objective = DetectionObjective(model, RunConfig())
    data = batch()
    torch.manual_seed(0)
    terms = objective(data)
    assert set(terms) == {"det_cls", "det_bbox", "det_giou"} | DENOISING_TERMS
    torch.manual_seed(0)
    record = adapter_for(model)(data["pixel_values"], data["pixel_mask"], data["labels"])
    decoder_only, _ = objective.criterion(record.logits, record.boxes_cxcywh, data["labels"])
    with_proposals, _ = objective.criterion(*record.detection_stages(), data["labels"])
    assert terms["det_bbox"].item() == pytest.approx(with_proposals["det_bbox"].item(), rel=1e-5)
    assert terms["det_bbox"].item() > decoder_only["det_bbox"].item()


def test_the_proposal_stage_adds_to_logits_distillation_and_needs_proposals_on_both_sides():
    teacher, student = tiny_pair("rt_detr", "d_fine")
    config = RunConfig()
    config.distill.features.enabled = config.distill.assignment.enabled = False
    torch.manual_seed(1)
    without = DETRDistillObjective(student, teacher, config)(batch())
    config.distill.logits.proposal_stage = True
    torch.manual_seed(1)
    with_stage = DETRDistillObjective(student, teacher, config)(batch())
    for name in ("ld_pos_cls", "ld_pos_box", "ld_neg_box"):
        assert with_stage[name].item() > without[name].item()
    assert with_stage["det_bbox"].item() == pytest.approx(without["det_bbox"].item(), rel=1e-5)

    teacher, student = tiny_pair("deformable_detr", "rt_detr")
    with pytest.raises(ConfigError, match="proposal_stage"):
        DETRDistillObjective(student, teacher, config)


def test_the_query_prior_is_the_teachers_selected_proposals():
    """A student that is a copy of its teacher answers the teacher's query prior (selected
    content and reference boxes) exactly as the teacher did: AD's group repeats the teacher."""
    teacher, _ = tiny_pair("rt_detr", "rt_detr", teacher_dim=32)
    student = copy.deepcopy(teacher).eval()
    objective = DETRDistillObjective(student, teacher, RunConfig())
    assert isinstance(objective.heads.assignment.query_map, torch.nn.Identity)  # same widths
    data = batch()
    with torch.no_grad():
        teacher_record = objective.teacher_adapter(data["pixel_values"], data["pixel_mask"])
        prior = objective.heads.assignment.prior_queries(teacher_record.query_embeddings)
        _, group = objective.student_adapter.forward_with_group(data["pixel_values"], data["pixel_mask"], prior)
    torch.testing.assert_close(group.boxes_cxcywh, teacher_record.boxes_cxcywh, atol=1e-5, rtol=0)
    torch.testing.assert_close(group.logits, teacher_record.logits, atol=1e-5, rtol=0)


def test_a_per_image_query_prior_cannot_go_to_adamixer():
    teacher, _ = tiny_pair("rt_detr", "rt_detr")
    student = tiny_adamixer()
    with pytest.raises(ConfigError, match="assignment.enabled: false"):
        DETRDistillObjective(student, teacher, RunConfig())
    config = RunConfig()
    config.distill.assignment.enabled = False
    assert torch.isfinite(sum(DETRDistillObjective(student, teacher, config)(batch()).values()))
