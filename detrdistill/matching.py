"""Hungarian matching between predictions and ground truth (DETR's bipartite matcher).

Costs are computed for the whole batch at once, then ``scipy.optimize.linear_sum_assignment``
solves each image's [Q, n_i] block.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from detrdistill.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

MatchIndices = list[tuple[torch.Tensor, torch.Tensor]]


def solve_each(costs: list[torch.Tensor]) -> MatchIndices:
    """Optimal assignment of each [R_i, C_i] cost matrix -> (row indices, column indices),
    both int64 [min(R_i, C_i)], rows ascending.

    Non-finite costs become a huge finite value so the solver never fails on them.
    """
    indices = []
    for cost in costs:
        cost = torch.nan_to_num(cost.detach().float(), nan=1e8, posinf=1e8, neginf=1e8).cpu()
        rows, cols = linear_sum_assignment(cost.numpy())
        indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return indices


def solve_assignments(cost: torch.Tensor, sizes: list[int]) -> MatchIndices:
    """cost [B, Q, sum(sizes)] (every query against every target of the batch) -> per image
    (query indices, target indices) from that image's [Q, n_i] block."""
    # One device-to-host copy for the whole batch rather than one per image.
    cost = cost.detach().float().cpu()
    return solve_each([block[image] for image, block in enumerate(cost.split(sizes, dim=-1))])


def classification_cost(
    logits: torch.Tensor, target_labels: torch.Tensor, class_head: str, focal_alpha: float, focal_gamma: float
) -> torch.Tensor:
    """logits [N, C], target_labels [M] -> cost [N, M] (lower is better)."""
    if class_head == "softmax":
        return -logits.softmax(-1)[:, target_labels]
    prob = logits.sigmoid()
    # Deformable DETR's focal cost: the focal loss of calling it positive minus that of negative.
    neg = (1 - focal_alpha) * prob**focal_gamma * -(1 - prob + 1e-8).log()
    pos = focal_alpha * (1 - prob) ** focal_gamma * -(prob + 1e-8).log()
    return pos[:, target_labels] - neg[:, target_labels]


class HungarianMatcher:
    """Match each image's predictions to its ground-truth boxes.

    cost = class_cost * classification + bbox_cost * L1(cxcywh) - giou_cost * GIoU.
    """

    def __init__(
        self,
        class_cost: float = 2.0,
        bbox_cost: float = 5.0,
        giou_cost: float = 2.0,
        class_head: str = "sigmoid",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        self.class_cost, self.bbox_cost, self.giou_cost = class_cost, bbox_cost, giou_cost
        self.class_head, self.focal_alpha, self.focal_gamma = class_head, focal_alpha, focal_gamma

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes_cxcywh: torch.Tensor, targets: list[dict]) -> MatchIndices:
        """logits [B, Q, C], boxes_cxcywh [B, Q, 4], targets: per image ``class_labels`` [n_i] and
        ``boxes`` [n_i, 4] (normalised cxcywh) -> per image (query indices, target indices)."""
        batch, num_queries = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        target_labels = torch.cat([t["class_labels"] for t in targets])
        target_boxes = torch.cat([t["boxes"] for t in targets])
        flat_logits, flat_boxes = logits.flatten(0, 1), boxes_cxcywh.flatten(0, 1)
        cost = (
            self.class_cost
            * classification_cost(flat_logits, target_labels, self.class_head, self.focal_alpha, self.focal_gamma)
            + self.bbox_cost * torch.cdist(flat_boxes, target_boxes, p=1)
            - self.giou_cost
            * generalized_box_iou(box_cxcywh_to_xyxy(flat_boxes), box_cxcywh_to_xyxy(target_boxes))
        )
        return solve_assignments(cost.view(batch, num_queries, -1), sizes)
