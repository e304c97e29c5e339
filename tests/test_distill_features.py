"""Target-aware feature distillation: masks, quality scores, the loss, level pairing."""

import math
from types import SimpleNamespace

import pytest
import torch

from detrdistill.config import FeatureDistillConfig
from detrdistill.losses.features import (
    FeatureDistillation,
    dot_product_masks,
    matched_iou,
    pair_levels,
    quality_scores,
    query_masks,
    release_mask,
)

DIM = 16


def _scene():
    """Teacher features [1, D, 8, 8] with an 'object' at rows 1-2, cols 5-6 whose features
    point along query 0's embedding; query 1 points elsewhere; the right column is padding."""
    generator = torch.Generator().manual_seed(0)
    features = 0.1 * torch.randn(1, DIM, 8, 8, generator=generator)
    queries = torch.zeros(1, 2, DIM)
    queries[0, 0, 0] = 4.0
    queries[0, 1, 1] = 4.0
    features[0, 0, 1:3, 5:7] = 3.0
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, :, 7] = False
    return features, valid, queries


def test_query_masks_are_nonnegative_zero_on_padding_and_peak_on_the_object():
    features, valid, queries = _scene()
    masks = query_masks(features, valid, queries)
    assert masks.shape == (1, 2, 8, 8)
    assert (masks >= 0).all()
    assert (masks[0, :, :, 7] == 0).all()
    assert masks[0, 0][valid[0]].mean().item() == pytest.approx(1.0, rel=1e-5)
    peak = torch.nonzero(masks[0, 0] == masks[0, 0].max())[0].tolist()
    assert 1 <= peak[0] <= 2 and 5 <= peak[1] <= 6
    assert masks[0, 0, 1:3, 5:7].mean() > 10 * masks[0, 0, 5:, :4].mean()

    release = release_mask(features, valid, queries, torch.tensor([[1.0, 0.0]]))
    assert (release >= 0).all() and release.max().item() == pytest.approx(1.0)
    assert torch.nonzero(release[0] == 1.0)[0, 1] >= 5


def test_quality_score_hand_values_and_matched_iou():
    assert quality_scores(torch.tensor([0.81]), torch.tensor([0.25]), 0.5).item() == pytest.approx(0.9 * 0.5)
    assert quality_scores(torch.tensor([0.9]), torch.tensor([0.0]), 0.5).item() == 0.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]])
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.1], [0.25, 0.25, 0.1, 0.1]])}]
    iou = matched_iou(boxes, targets, [(torch.tensor([0, 1]), torch.tensor([0, 1]))])
    assert iou[0].tolist() == pytest.approx([0.5, 1.0, 0.0])  # query 2 is unmatched


@pytest.mark.parametrize("mask", ["quality", "paper", "vanilla", "release"])
def test_loss_is_zero_for_equal_features_and_positive_otherwise(mask):
    features, valid, queries = _scene()
    distillation = FeatureDistillation(FeatureDistillConfig(mask=mask), DIM, DIM, num_student_levels=1)
    weights = torch.tensor([[0.8, 0.1]])
    assert distillation.loss([features], [features], [valid], queries, weights).item() == 0.0
    student = (features + 0.5).requires_grad_()
    loss = distillation.loss([student], [features], [valid], queries, weights)
    loss.backward()
    assert loss.item() > 0 and student.grad.abs().sum() > 0
    assert student.grad[0, :, :, 7].abs().sum() == 0  # padding carries no loss


def test_quality_weighting_ignores_zero_quality_queries_and_vanilla_does_not():
    """An error placed where only query 0 attends: with q_0 = 0 the quality mask ignores it."""
    features, valid, queries = _scene()
    student = features.clone()
    student[0, :, 1:3, 5:7] += 1.0
    zero_q0 = torch.tensor([[0.0, 1.0]])
    quality = FeatureDistillation(FeatureDistillConfig(mask="quality"), DIM, DIM, 1)
    vanilla = FeatureDistillation(FeatureDistillConfig(mask="vanilla"), DIM, DIM, 1)
    ignored = quality.loss([student], [features], [valid], queries, zero_q0).item()
    attended = quality.loss([student], [features], [valid], queries, torch.tensor([[1.0, 0.0]])).item()
    assert attended > 30 * ignored  # query 1 spreads its weight evenly, object included
    assert vanilla.loss([student], [features], [valid], queries, None).item() > 10 * ignored


def test_projection_when_widths_differ_and_levels_pair_by_size():
    distillation = FeatureDistillation(FeatureDistillConfig(), student_dim=8, teacher_dim=DIM, num_student_levels=2)
    assert distillation.projections[0].weight.shape == (DIM, 8, 1, 1)
    assert pair_levels([(8, 8), (4, 4)], [(8, 8), (4, 4), (2, 2)]) == [0, 1]
    assert pair_levels([(8, 8), (4, 4), (2, 2)], [(8, 8)]) == [0, 0, 0]
    features, valid, queries = _scene()
    students = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    loss = distillation.loss(students, [features], [valid], queries, torch.ones(1, 2))
    loss.backward()
    assert all(p.grad is not None for p in distillation.parameters())


def test_bad_mask_name_is_a_clear_error():
    with pytest.raises(ValueError, match="distill.features.mask"):
        FeatureDistillation(FeatureDistillConfig(mask="gaussian"), DIM, DIM, 1)


def _two_pixel_scene():
    """D = 2, one row of two valid pixels: F[:, p0] = (1, 0), F[:, p1] = (0, 2); queries
    Q_0 = (2, 0), Q_1 = (0, 1) with quality (0.5, 1.0); the student is off by (1, 1) at p0 and
    (0, 3) at p1, so ||F^T - F^S||^2 = 2 and 9."""
    teacher = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # [1, 2, 1, 2]
    student = teacher - torch.tensor([[[[1.0, 0.0]], [[1.0, 3.0]]]])
    queries = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    return teacher, student, queries, valid, torch.tensor([[0.5, 1.0]])


def test_paper_mask_is_eq6_dot_product_squared_in_eq8_by_hand():
    teacher, student, queries, valid, quality = _two_pixel_scene()
    masks = dot_product_masks(teacher, valid, queries)
    assert masks[0, :, 0].tolist() == [[2.0, 0.0], [0.0, 2.0]]  # psi_0 = (2, 0), psi_1 = (0, 2)
    # w(p) = mean_i q_i psi_i(p)^2 = (0.5 * 4 / 2, 1.0 * 4 / 2) = (1, 2);
    # L = sum_p w(p) ||diff(p)||^2 / (d H W) = (1 * 2 + 2 * 9) / (2 * 2) = 5.
    paper = FeatureDistillation(FeatureDistillConfig(mask="paper"), 2, 2, 1)
    assert paper.loss([student], [teacher], [valid], queries, quality).item() == pytest.approx(5.0)
    # The sign of psi never matters: eq. 8 squares it.
    assert paper.loss([student], [teacher], [valid], -queries, quality).item() == pytest.approx(5.0)
    padded = valid.clone()
    padded[0, 0, 1] = False
    assert (dot_product_masks(teacher, padded, queries)[0, :, 0, 1] == 0).all()


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_softmax_masks_with_a_temperature_by_hand(temperature):
    teacher, student, queries, valid, quality = _two_pixel_scene()
    scale = temperature * math.sqrt(2)  # tau sqrt(d)

    def psi(dots):  # HW * softmax over the two pixels
        exps = [math.exp(d / scale) for d in dots]
        return [2 * e / sum(exps) for e in exps]

    psi_0, psi_1 = psi([2.0, 0.0]), psi([0.0, 2.0])
    masks = query_masks(teacher, valid, queries, temperature)
    assert masks[0, 0, 0].tolist() == pytest.approx(psi_0, rel=1e-6)
    assert masks[0, 1, 0].tolist() == pytest.approx(psi_1, rel=1e-6)
    errors = [2.0, 9.0]
    quality_w = [(0.5 * psi_0[p] ** 2 + 1.0 * psi_1[p] ** 2) / 2 for p in range(2)]
    vanilla_w = [((psi_0[p] + psi_1[p]) / 2) ** 2 for p in range(2)]
    for mask, weights in (("quality", quality_w), ("vanilla", vanilla_w)):
        config = FeatureDistillConfig(mask=mask, temperature=temperature)
        loss = FeatureDistillation(config, 2, 2, 1).loss([student], [teacher], [valid], queries,
                                                     quality if mask == "quality" else None)
        assert loss.item() == pytest.approx(sum(w * e for w, e in zip(weights, errors, strict=True)) / 4, rel=1e-6)


def test_lower_temperature_concentrates_the_mask_on_the_object():
    features, valid, queries = _scene()
    obj = (slice(1, 3), slice(5, 7))
    warm, cold = query_masks(features, valid, queries, 1.0), query_masks(features, valid, queries, 0.5)
    assert cold[0, 0][obj].sum() > warm[0, 0][obj].sum()
    assert cold[0, 0][valid[0]].mean().item() == pytest.approx(1.0, rel=1e-5)


def test_bad_temperature_and_feature_source_are_clear_errors():
    with pytest.raises(ValueError, match="distill.features.temperature"):
        FeatureDistillConfig(temperature=0.0)
    with pytest.raises(ValueError, match="distill.features.features"):
        FeatureDistillConfig(features="neck")


@pytest.mark.parametrize("source", ["encoder_output", "encoder_input"])
def test_fd_on_records_reads_the_configured_maps_and_names_its_term(source):
    """forward takes the two records and returns {"fd": ...}: the loss on the encoder output
    (``features``) or its input (``encoder_inputs``), masks from the teacher's last stage."""
    generator = torch.Generator().manual_seed(0)

    def record():
        maps = lambda: [torch.randn(1, DIM, 4, 4, generator=generator)]  # noqa: E731
        return SimpleNamespace(features=maps(), encoder_inputs=maps(), feature_masks=[torch.ones(1, 4, 4, dtype=bool)],
                               decoder_hidden=torch.randn(2, 1, 3, DIM, generator=generator))

    student, teacher = record(), record()
    weights = torch.tensor([[1.0, 0.5, 0.0]])
    distillation = FeatureDistillation(FeatureDistillConfig(features=source), DIM, DIM, 1)
    terms = distillation(student, teacher, weights)
    maps = "encoder_inputs" if source == "encoder_input" else "features"
    expected = distillation.loss(getattr(student, maps), getattr(teacher, maps), teacher.feature_masks,
                                 teacher.decoder_hidden[-1], weights)
    other = distillation.loss(getattr(student, "features" if maps == "encoder_inputs" else "encoder_inputs"),
                              getattr(teacher, "features" if maps == "encoder_inputs" else "encoder_inputs"),
                              teacher.feature_masks, teacher.decoder_hidden[-1], weights)
    assert list(terms) == ["fd"] and terms["fd"].item() == expected.item() != other.item()
