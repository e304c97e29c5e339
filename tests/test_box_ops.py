import pytest
import torch

from detrdistill.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    elementwise_generalized_box_iou,
    generalized_box_iou,
)


def _random_boxes_xyxy(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    size = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 0.5 + 0.01
    return torch.cat([top_left, top_left + size], dim=-1)


def test_cxcywh_to_xyxy_hand_values():
    boxes_cxcywh = torch.tensor([[0.5, 0.5, 1.0, 1.0], [2.0, 3.0, 4.0, 2.0]])
    expected_xyxy = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 2.0, 4.0, 4.0]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(boxes_cxcywh), expected_xyxy)
    torch.testing.assert_close(box_xyxy_to_cxcywh(expected_xyxy), boxes_cxcywh)


def test_conversions_round_trip_with_leading_dims():
    boxes_xyxy = _random_boxes_xyxy(24, seed=0).reshape(2, 3, 4, 4)
    round_trip = box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes_xyxy))
    assert round_trip.shape == (2, 3, 4, 4)
    torch.testing.assert_close(round_trip, boxes_xyxy)


def test_box_area():
    boxes_xyxy = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0]])
    torch.testing.assert_close(box_area(boxes_xyxy), torch.tensor([6.0, 0.0]))


def test_iou_of_unit_squares_offset_by_half():
    boxes1 = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    boxes2 = torch.tensor([[0.5, 0.0, 1.5, 1.0], [0.0, 0.0, 1.0, 1.0]])
    iou, union = box_iou(boxes1, boxes2)
    assert iou.shape == union.shape == (1, 2)
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 1.0]]))
    torch.testing.assert_close(union, torch.tensor([[1.5, 1.0]]))


def test_generalized_iou_hand_values():
    boxes1 = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    boxes2 = torch.tensor(
        [
            [0.5, 0.0, 1.5, 1.0],  # overlaps box1[0]; the enclosing box is the union -> IoU
            [2.0, 0.0, 3.0, 1.0],  # disjoint from box1[0]: 0 - (3 - 2) / 3
            [1.0, 1.0, 3.0, 3.0],  # with box1[1]: IoU 1/7, enclosing 9, union 7
        ]
    )
    giou = generalized_box_iou(boxes1, boxes2)
    assert giou.shape == (2, 3)
    torch.testing.assert_close(giou[0, 0], torch.tensor(1 / 3))
    torch.testing.assert_close(giou[0, 1], torch.tensor(-1 / 3))
    torch.testing.assert_close(giou[1, 2], torch.tensor(1 / 7 - 2 / 9))
    torch.testing.assert_close(generalized_box_iou(boxes1, boxes1).diagonal(), torch.ones(2))


def test_elementwise_generalized_iou_equals_pairwise_diagonal():
    boxes1 = _random_boxes_xyxy(16, seed=1)
    boxes2 = _random_boxes_xyxy(16, seed=2)
    elementwise = elementwise_generalized_box_iou(boxes1, boxes2)
    assert elementwise.shape == (16,)
    torch.testing.assert_close(elementwise, generalized_box_iou(boxes1, boxes2).diagonal())


def test_elementwise_generalized_iou_rejects_unpaired_shapes():
    with pytest.raises(ValueError, match="same shape"):
        elementwise_generalized_box_iou(torch.zeros(3, 4), torch.zeros(2, 4))


@pytest.mark.parametrize(
    "bad_box",
    [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0], [float("nan"), 0.0, 1.0, 1.0]],
)
def test_generalized_iou_rejects_degenerate_boxes(bad_box):
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor([bad_box])
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(good, bad)
    with pytest.raises(ValueError, match="degenerate"):
        elementwise_generalized_box_iou(bad, good)


def test_gradient_flows_through_cxcywh_and_giou():
    predicted_cxcywh = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.6, 0.2, 0.3]], requires_grad=True)
    target_xyxy = torch.tensor([[0.35, 0.3, 0.75, 0.7], [0.1, 0.5, 0.3, 0.8]])
    predicted_xyxy = box_cxcywh_to_xyxy(predicted_cxcywh)
    loss = (1 - elementwise_generalized_box_iou(predicted_xyxy, target_xyxy)).sum()
    loss = loss + (1 - generalized_box_iou(predicted_xyxy, target_xyxy)).sum()
    loss.backward()
    assert predicted_cxcywh.grad is not None
    assert torch.isfinite(predicted_cxcywh.grad).all()
    assert predicted_cxcywh.grad.abs().sum() > 0
