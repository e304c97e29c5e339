"""Hungarian-matching logits distillation: matching, pos/neg split, stage mapping, switches."""

import pytest
import torch

from detrdistill.config import LogitsDistillConfig
from detrdistill.losses.logits import (
    LogitsDistillation,
    match_teacher_student,
    soft_class_loss,
    stage_mapping,
    teacher_positive_mask,
)


def _teacher(stages=3, batch=2, queries=6, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(stages, batch, queries, classes, generator=generator) * 2
    centers = torch.rand(stages, batch, queries, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(stages, batch, queries, 2, generator=generator) * 0.2 + 0.05
    return logits, torch.cat([centers, sizes], -1)


def _gt_indices(stages, positives_per_image):
    """The teacher's match to GT at every stage: image i's positives are the given queries."""
    return [
        [(torch.tensor(queries, dtype=torch.int64), torch.arange(len(queries))) for queries in positives_per_image]
        for _ in range(stages)
    ]


def test_stage_mapping_groups_teacher_stages():
    assert stage_mapping(6, 6) == [0, 1, 2, 3, 4, 5]
    assert stage_mapping(3, 6) == [1, 3, 5]  # ceil(k * 6 / 3) - 1
    assert stage_mapping(6, 3) == [0, 0, 1, 1, 2, 2]  # ceil(k * 3 / 6) - 1
    assert stage_mapping(4, 6, progressive=False) == [5, 5, 5, 5]


def test_match_recovers_a_known_permutation_for_more_fewer_and_equal_queries():
    logits, boxes = _teacher(stages=1, batch=1, queries=5)
    config = LogitsDistillConfig()
    permutation = torch.tensor([3, 0, 4, 1, 2])
    student_logits, student_boxes = logits[0][:, permutation], boxes[0][:, permutation]
    ((t_idx, s_idx),) = match_teacher_student(logits[0], boxes[0], student_logits, student_boxes, "sigmoid", config)
    assert torch.equal(permutation[s_idx], t_idx)  # student query s is teacher query permutation[s]

    # M > N: a student holding teacher queries 1 and 3 is matched to exactly those.
    ((t_idx, s_idx),) = match_teacher_student(
        logits[0], boxes[0], logits[0][:, [3, 1]], boxes[0][:, [3, 1]], "sigmoid", config
    )
    assert sorted(zip(t_idx.tolist(), s_idx.tolist(), strict=True)) == [(1, 1), (3, 0)]

    # M < N: every teacher query finds its copy among the student's extra queries.
    extra_logits = torch.cat([logits[0], torch.randn(1, 3, 4)], 1)
    extra_boxes = torch.cat([boxes[0], torch.tensor([0.9, 0.9, 0.05, 0.05]).expand(1, 3, 4)], 1)
    ((t_idx, s_idx),) = match_teacher_student(logits[0], boxes[0], extra_logits, extra_boxes, "sigmoid", config)
    assert torch.equal(t_idx, s_idx) and len(t_idx) == 5


@pytest.mark.parametrize("class_head", ["sigmoid", "softmax"])
def test_loss_is_zero_for_a_permuted_copy_and_grows_with_perturbation(class_head):
    logits, boxes = _teacher()
    permutation = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    gt = _gt_indices(3, [[0, 2], [5]])
    distillation = LogitsDistillation(LogitsDistillConfig(), class_head)
    copy = distillation(logits[:, :, permutation], boxes[:, :, permutation], logits, boxes, gt)
    for name, value in copy.items():
        assert value.item() == pytest.approx(0.0, abs=1e-5), name

    generator = torch.Generator().manual_seed(2)
    small, large = [
        distillation(
            logits[:, :, permutation] + scale * torch.randn(logits.shape, generator=generator),
            (boxes[:, :, permutation] + scale * 0.1 * torch.randn(boxes.shape, generator=generator)).clamp(0.01, 0.99),
            logits, boxes, gt,
        )
        for scale in (0.1, 1.0)
    ]
    for name in ("ld_pos_cls", "ld_pos_box", "ld_neg_box"):
        assert 0 < small[name].item() < large[name].item(), name


def test_negatives_get_no_class_term_and_switches_turn_terms_off():
    logits, boxes = _teacher()
    student_logits = logits + 1.0  # class outputs differ everywhere, boxes equal
    no_positives = _gt_indices(3, [[], []])
    terms = LogitsDistillation(LogitsDistillConfig(), "sigmoid")(student_logits, boxes, logits, boxes, no_positives)
    assert terms["ld_pos_cls"].item() == 0.0  # every pair is a negative: class differences are ignored
    assert terms["ld_neg_box"].item() == pytest.approx(0.0, abs=1e-6)

    release = LogitsDistillation(LogitsDistillConfig(all_pairs=True), "sigmoid")
    assert release(student_logits, boxes, logits, boxes, no_positives)["ld_pos_cls"].item() > 0

    gt = _gt_indices(3, [[0, 2], [5]])
    shifted = (boxes + 0.05).clamp(max=0.99)
    off = LogitsDistillation(LogitsDistillConfig(pos_cls=False, pos_reg=False, neg_reg=False), "sigmoid")
    assert all(v.item() == 0.0 for v in off(student_logits, shifted, logits, boxes, gt).values())
    only_neg = LogitsDistillation(LogitsDistillConfig(pos_cls=False, pos_reg=False), "sigmoid")
    terms = only_neg(student_logits, shifted, logits, boxes, gt)
    assert terms["ld_pos_cls"].item() == 0.0 and terms["ld_pos_box"].item() == 0.0 and terms["ld_neg_box"] > 0


def test_class_term_hand_value():
    """One pair: Bernoulli KL summed over classes, by hand."""
    student, teacher = torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, -1.0]])
    p, q = torch.sigmoid(teacher), torch.sigmoid(student)
    expected = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum()
    assert soft_class_loss(student, teacher, "sigmoid").item() == pytest.approx(expected.item(), rel=1e-5)


def test_positive_mask_and_no_nan_without_positives():
    mask = teacher_positive_mask([(torch.tensor([1, 3]), torch.tensor([0, 1])), (torch.tensor([]).long(),) * 2], 4)
    assert mask.tolist() == [[False, True, False, True], [False, False, False, False]]
    logits, boxes = _teacher(stages=2)
    student_logits = logits.clone().requires_grad_()
    student_boxes = (boxes + 0.02).requires_grad_()
    terms = LogitsDistillation(LogitsDistillConfig(), "sigmoid")(
        student_logits, student_boxes, logits, boxes, _gt_indices(2, [[], []])
    )
    total = sum(terms.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(student_boxes.grad).all()


def test_student_with_fewer_stages_learns_from_grouped_teacher_stages():
    """3 student stages under a 6-stage teacher read teacher stages 2, 4, 6: a student that
    copies exactly those stages has zero loss."""
    logits, boxes = _teacher(stages=6)
    gt = _gt_indices(6, [[0], [1, 2]])
    terms = LogitsDistillation(LogitsDistillConfig(), "sigmoid")(logits[[1, 3, 5]], boxes[[1, 3, 5]], logits, boxes, gt)
    assert sum(terms.values()).item() == pytest.approx(0.0, abs=1e-5)
    wrong = LogitsDistillation(LogitsDistillConfig(), "sigmoid")(logits[[0, 2, 4]], boxes[[0, 2, 4]], logits, boxes, gt)
    assert sum(wrong.values()).item() > 0.1


@pytest.mark.parametrize("normalise", ["per_term", "matched"])
def test_pair_normalisation_by_hand(normalise):
    """One stage, one image, 4 well-separated queries, teacher query 0 the only positive; the
    student shifts each box's centre x by d_i (L1 weight 1, no GIoU), so pair i costs d_i.
    per_term: positives over 1 pair, negatives over 3; matched: both over all 4."""
    boxes = torch.tensor([[[[0.2, 0.2, 0.1, 0.1], [0.8, 0.2, 0.1, 0.1], [0.2, 0.8, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]]])
    logits = torch.zeros(1, 1, 4, 3)
    shifts = torch.tensor([0.04, 0.01, 0.02, 0.03])
    student_boxes = boxes.clone()
    student_boxes[..., 0] += shifts
    config = LogitsDistillConfig(bbox_weight=1.0, giou_weight=0.0, normalise=normalise)
    terms = LogitsDistillation(config, "sigmoid")(logits, student_boxes, logits, boxes, _gt_indices(1, [[0]]))
    pos_count, neg_count = (1, 3) if normalise == "per_term" else (4, 4)
    assert terms["ld_pos_box"].item() == pytest.approx(0.04 / pos_count, rel=1e-5)
    assert terms["ld_neg_box"].item() == pytest.approx((0.01 + 0.02 + 0.03) / neg_count, rel=1e-5)
    assert terms["ld_pos_cls"].item() == pytest.approx(0.0, abs=1e-6)


def test_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="distill.logits.normalise"):
        LogitsDistillConfig(normalise="mean")
