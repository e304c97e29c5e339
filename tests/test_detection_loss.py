"""DetectionLoss: equal to transformers' own loss, hand values, given assignments, empty images."""

import math

import pytest
import torch

from detrdistill.config import LossConfig
from detrdistill.losses.detection import DetectionLoss
from detrdistill.models.adapters import adapter_for

FAMILIES = ["detr", "conditional_detr", "deformable_detr"]


def batch_and_labels() -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Two 64x64 canvases, the second padded on the right; 3 objects in all."""
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)
    pixel_mask[1, :, 40:] = 0
    pixel_values[1, :, :, 40:] = 0
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.25, 0.5, 0.2, 0.4]])},
    ]
    return pixel_values, pixel_mask, labels


def loss_config_like_transformers(config) -> LossConfig:
    """Our LossConfig with the weights transformers' loss functions use for ``config``.

    transformers weighs loss_ce by 1 (it ignores cls_loss_coefficient), loss_bbox by
    bbox_loss_coefficient and loss_giou by giou_loss_coefficient, on every stage.
    """
    return LossConfig(
        class_cost=float(config.class_cost),
        bbox_cost=float(config.bbox_cost),
        giou_cost=float(config.giou_cost),
        class_weight=1.0,
        bbox_weight=float(config.bbox_loss_coefficient),
        giou_weight=float(config.giou_loss_coefficient),
        focal_alpha=float(getattr(config, "focal_alpha", 0.25)),
        focal_gamma=2.0,  # transformers' focal loss and focal matching cost fix gamma = 2
        eos_coef=float(getattr(config, "eos_coefficient", 0.1)),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_equals_transformers_loss(family, tiny_detector):
    model = tiny_detector(family, perturb=0.2).eval()
    # Non-default weights, so that a loss that ignored them could not agree by chance
    # (transformers' configs validate these fields as ints).
    model.config.bbox_loss_coefficient = 3
    model.config.giou_loss_coefficient = 1
    model.config.bbox_cost = 4
    model.config.giou_cost = 1
    model.config.class_cost = 3
    if family == "detr":
        model.config.eos_coefficient = 0.3
    pixel_values, pixel_mask, labels = batch_and_labels()
    adapter = adapter_for(model)
    with torch.no_grad():
        output = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
        record = adapter(pixel_values, pixel_mask)
    criterion = DetectionLoss(loss_config_like_transformers(model.config), adapter.num_classes, adapter.class_head)
    terms, indices = criterion(record.logits, record.boxes_cxcywh, labels)

    assert len(indices) == record.num_stages == 3
    stage_suffixes = ["", "_0", "_1"]
    expected = {
        "det_cls": sum(output.loss_dict[f"loss_ce{s}"] for s in stage_suffixes),
        "det_bbox": 3.0 * sum(output.loss_dict[f"loss_bbox{s}"] for s in stage_suffixes),
        "det_giou": 1.0 * sum(output.loss_dict[f"loss_giou{s}"] for s in stage_suffixes),
    }
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(float(value), rel=1e-4), name
    assert float(sum(terms.values())) == pytest.approx(float(output.loss), rel=1e-4)


def test_hand_values_sigmoid():
    config = LossConfig(class_weight=2.0, bbox_weight=5.0, giou_weight=2.0, focal_alpha=0.25, focal_gamma=2.0)
    criterion = DetectionLoss(config, num_classes=2, class_head="sigmoid")
    targets = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2]])}]
    logits = torch.tensor([2.0, -1.0]).view(1, 1, 1, 2)

    perfect = torch.tensor([0.6, 0.5, 0.2, 0.2]).view(1, 1, 1, 4)
    terms, _ = criterion(logits, perfect, targets)
    assert float(terms["det_bbox"]) == pytest.approx(0.0, abs=1e-7)
    assert float(terms["det_giou"]) == pytest.approx(0.0, abs=1e-6)

    # Focal loss by hand: class 0 is the target (positive), class 1 negative.
    p0, p1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    focal = 0.25 * (1 - p0) ** 2 * -math.log(p0) + 0.75 * p1**2 * -math.log(1 - p1)
    assert float(terms["det_cls"]) == pytest.approx(2.0 * focal, rel=1e-5)

    # Shifted right by 0.1: L1 = 0.1; two 0.2-wide boxes overlapping 0.1 have IoU 1/3 and an
    # enclosing box equal to their union, so GIoU = 1/3. Two stages sum.
    shifted = torch.tensor([0.5, 0.5, 0.2, 0.2]).view(1, 1, 1, 4).repeat(2, 1, 1, 1)
    terms, _ = criterion(logits.repeat(2, 1, 1, 1), shifted, targets)
    assert float(terms["det_bbox"]) == pytest.approx(2 * 5.0 * 0.1, rel=1e-5)
    assert float(terms["det_giou"]) == pytest.approx(2 * 2.0 * (1 - 1 / 3), rel=1e-5)
    assert float(terms["det_cls"]) == pytest.approx(2 * 2.0 * focal, rel=1e-5)

    # An explicit normaliser divides every term.
    halved, _ = criterion(logits.repeat(2, 1, 1, 1), shifted, targets, num_boxes=2.0)
    for name in terms:
        assert float(halved[name]) == pytest.approx(float(terms[name]) / 2, rel=1e-6)


def test_hand_values_softmax_no_object_weight():
    """Two queries, one object: cross-entropy weighted by 1 for the matched query and
    eos_coef for the unmatched one, averaged over the weights."""
    config = LossConfig(class_weight=1.0, eos_coef=0.1)
    criterion = DetectionLoss(config, num_classes=2, class_head="softmax")
    targets = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    logits = torch.tensor([[0.5, 2.0, -1.0], [1.0, 0.0, 0.5]]).view(1, 1, 2, 3)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]).view(1, 1, 2, 4)
    terms, indices = criterion(logits, boxes, targets)
    assert [(r.tolist(), c.tolist()) for r, c in indices[0]] == [([0], [0])]
    log_softmax = logits[0, 0].log_softmax(-1)
    ce_matched, ce_unmatched = -float(log_softmax[0, 1]), -float(log_softmax[1, 2])
    expected = (1.0 * ce_matched + 0.1 * ce_unmatched) / (1.0 + 0.1)
    assert float(terms["det_cls"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["det_bbox"]) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("class_head", ["sigmoid", "softmax"])
def test_given_assignment_is_used(class_head):
    """Query 0 sits on the target, query 1 far away. A fresh match picks query 0 (zero box
    loss); the given assignment (query 1) must be used as is."""
    config = LossConfig()
    criterion = DetectionLoss(config, num_classes=2, class_head=class_head)
    columns = 3 if class_head == "softmax" else 2
    logits = torch.zeros(1, 1, 2, columns)
    target_box = [0.5, 0.5, 0.2, 0.2]
    boxes = torch.tensor([target_box, [0.3, 0.6, 0.1, 0.3]]).view(1, 1, 2, 4)
    targets = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([target_box])}]

    fresh_terms, fresh_indices = criterion(logits, boxes, targets)
    assert [(r.tolist(), c.tolist()) for r, c in fresh_indices[0]] == [([0], [0])]
    assert float(fresh_terms["det_bbox"]) == pytest.approx(0.0, abs=1e-7)

    given = [[(torch.tensor([1]), torch.tensor([0]))]]
    terms, used = criterion(logits, boxes, targets, indices=given)
    assert used == given
    l1 = 0.2 + 0.1 + 0.1 + 0.1
    assert float(terms["det_bbox"]) == pytest.approx(config.bbox_weight * l1, rel=1e-5)
    assert float(terms["det_giou"]) > 0
    # The classification target moved to query 1 as well; with equal logits for both queries
    # and symmetric roles the class term is unchanged.
    assert float(terms["det_cls"]) == pytest.approx(float(fresh_terms["det_cls"]), rel=1e-6)
    # A given assignment with a differently scored query changes the class term.
    logits[0, 0, 1, 0] = 3.0
    with_fresh, _ = criterion(logits, boxes, targets)
    with_given, _ = criterion(logits, boxes, targets, indices=given)
    assert float(with_given["det_cls"]) < float(with_fresh["det_cls"])


def _empty_target() -> dict:
    return {"class_labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}


@pytest.mark.parametrize("class_head", ["sigmoid", "softmax"])
@pytest.mark.parametrize("all_empty", [False, True])
def test_images_without_objects(class_head, all_empty):
    generator = torch.Generator().manual_seed(3)
    columns = 4 if class_head == "softmax" else 3
    logits = torch.randn(3, 2, 5, columns, generator=generator).requires_grad_()
    raw_boxes = torch.randn(3, 2, 5, 4, generator=generator).requires_grad_()
    targets = [_empty_target(), _empty_target()]
    if not all_empty:
        targets[1] = {"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.2]])}
    criterion = DetectionLoss(LossConfig(), num_classes=3, class_head=class_head)
    terms, indices = criterion(logits, raw_boxes.sigmoid(), targets)
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    assert all(rows.numel() == 0 for rows, _ in (stage[0] for stage in indices))
    if all_empty:
        # Nothing to regress; every query is pushed towards "no object".
        assert terms["det_bbox"].item() == 0.0 and terms["det_giou"].item() == 0.0
        assert terms["det_cls"].item() > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.isfinite(raw_boxes.grad).all()


def test_model_trains_on_an_all_empty_batch(tiny_detector):
    model = tiny_detector("conditional_detr", perturb=0.2).train()
    adapter = adapter_for(model)
    pixel_values, pixel_mask, _ = batch_and_labels()
    record = adapter(pixel_values, pixel_mask)
    criterion = DetectionLoss(LossConfig(), adapter.num_classes, adapter.class_head)
    terms, _ = criterion(record.logits, record.boxes_cxcywh, [_empty_target(), _empty_target()])
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.class_labels_classifier.weight.grad.abs().sum() > 0
