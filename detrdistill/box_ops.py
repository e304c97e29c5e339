"""Box format conversions and (generalised) IoU, in pure, differentiable torch.

Follows facebookresearch/detr's util/box_ops.py. Boxes are ``[..., 4]`` tensors
either as ``(cx, cy, w, h)`` ("cxcywh") or as corners ``(x0, y0, x1, y1)``
("xyxy"); the IoU functions take xyxy boxes in any consistent unit.
"""

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``[..., 4]`` centre/size boxes to ``[..., 4]`` corner boxes."""
    center_x, center_y, width, height = boxes.unbind(-1)
    return torch.stack(
        [
            center_x - 0.5 * width,
            center_y - 0.5 * height,
            center_x + 0.5 * width,
            center_y + 0.5 * height,
        ],
        dim=-1,
    )


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert ``[..., 4]`` corner boxes to ``[..., 4]`` centre/size boxes."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes, shape ``[...]``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes ``[N, 4]`` and ``[M, 4]``.

    Returns ``(iou, union)``, both ``[N, M]``; the union is returned because
    generalised IoU needs it too.
    """
    return _iou_and_union(boxes1[:, None, :], boxes2[None, :, :])


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU (https://giou.stanford.edu/) of ``[N, 4]`` and ``[M, 4]``.

    Boxes are xyxy with ``x1 >= x0`` and ``y1 >= y0``; returns ``[N, M]`` in ``[-1, 1]``.
    Two zero-area boxes give NaN (0 / 0), as in DETR.
    """
    _check_not_degenerate(boxes1, "boxes1")
    _check_not_degenerate(boxes2, "boxes2")
    return _generalized_iou(boxes1[:, None, :], boxes2[None, :, :])


def batched_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU within each batch element: ``[B, N, 4]``, ``[B, M, 4]`` -> ``[B, N, M]``.

    One call for a whole batch of per-image matchings (e.g. teacher vs student boxes).
    """
    _check_not_degenerate(boxes1, "boxes1")
    _check_not_degenerate(boxes2, "boxes2")
    return _generalized_iou(boxes1[:, :, None, :], boxes2[:, None, :, :])


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU of already-paired xyxy boxes: ``[N, 4]``, ``[N, 4]`` -> ``[N]``.

    Equals ``generalized_box_iou(boxes1, boxes2).diagonal()`` in O(N) time and memory,
    for losses over matched prediction/target pairs.
    """
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            "elementwise_generalized_box_iou needs paired boxes of the same shape, "
            f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    _check_not_degenerate(boxes1, "boxes1")
    _check_not_degenerate(boxes2, "boxes2")
    return _generalized_iou(boxes1, boxes2)


def _iou_and_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union area of broadcastable ``[..., 4]`` xyxy boxes, each ``[...]``."""
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    overlap_wh = (bottom_right - top_left).clamp(min=0)
    intersection = overlap_wh[..., 0] * overlap_wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - intersection
    return intersection / union, union


def _generalized_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU of broadcastable ``[..., 4]`` xyxy boxes, shape ``[...]``."""
    iou, union = _iou_and_union(boxes1, boxes2)
    # The smallest box enclosing both; its area not covered by the union is the penalty.
    top_left = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    enclosing_wh = (bottom_right - top_left).clamp(min=0)
    enclosing_area = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    return iou - (enclosing_area - union) / enclosing_area


def _check_not_degenerate(boxes_xyxy: Tensor, name: str) -> None:
    """Raise if any box has ``x1 < x0``, ``y1 < y0`` or NaN corners: GIoU is meaningless there.

    Inverted boxes usually mean cxcywh boxes were passed where xyxy was expected.
    """
    # Written as "not >=" rather than "<" so that NaN corners are caught too.
    invalid = ~(boxes_xyxy[..., 2:] >= boxes_xyxy[..., :2]).all(-1)
    if invalid.any():
        count = int(invalid.sum())
        raise ValueError(
            f"{name} has {count} degenerate box(es) with x1 < x0, y1 < y0 or NaN corners; "
            "generalised IoU expects xyxy boxes (convert cxcywh with box_cxcywh_to_xyxy)"
        )
