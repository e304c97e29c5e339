"""The ordinary DETR detection loss over every decoder stage (DETR's ``SetCriterion``).

Per stage: Hungarian-match predictions to ground truth (or take a given assignment), then
classification (sigmoid focal loss, or softmax cross-entropy with a down-weighted
no-object class) + L1 + GIoU on matched boxes, each normalised by the number of
ground-truth boxes. Terms are summed over stages and returned by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detrdistill.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from detrdistill.config import LossConfig
from detrdistill.distributed import mean_over_processes
from detrdistill.matching import HungarianMatcher, MatchIndices


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Element-wise focal loss; logits and targets [..., C] -> [..., C]."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * loss


def matched_pairs(indices: MatchIndices) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (query, target) indices -> flat (batch index, query index) over the batch."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx


class DetectionLoss:
    """Detection loss of one detector, for all its decoder stages.

    Args:
        config: matching costs and loss weights.
        num_classes: number of real classes (without no-object).
        class_head: "sigmoid" or "softmax".
    """

    def __init__(self, config: LossConfig, num_classes: int, class_head: str):
        self.config, self.num_classes, self.class_head = config, num_classes, class_head
        self.matcher = HungarianMatcher.from_config(config, class_head)

    def classification(
        self, logits: torch.Tensor, targets: list[dict], indices: MatchIndices, num_boxes: float
    ) -> torch.Tensor:
        """logits [B, Q, C]; unmatched queries are trained towards no object."""
        batch_idx, query_idx = matched_pairs(indices)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        matched_labels = [t["class_labels"][j] for t, (_, j) in zip(targets, indices, strict=True)]
        target_classes[batch_idx, query_idx] = torch.cat(matched_labels)
        if self.class_head == "softmax":
            weight = torch.ones(self.num_classes + 1, device=logits.device)
            weight[-1] = self.config.eos_coef
            # F.cross_entropy's weighted mean, sum(w_i l_i) / sum(w_i), with the sum of weights
            # averaged over processes like num_boxes (the same value in one process).
            weighted = F.cross_entropy(logits.transpose(1, 2), target_classes, weight, reduction="none")
            return weighted.sum() / mean_over_processes(weight[target_classes].sum())
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
        focal = sigmoid_focal_loss(logits, onehot, self.config.focal_alpha, self.config.focal_gamma)
        return focal.sum() / num_boxes

    def boxes(
        self, boxes_cxcywh: torch.Tensor, targets: list[dict], indices: MatchIndices, num_boxes: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """boxes_cxcywh [B, Q, 4] -> (L1, 1 - GIoU), each summed over matches / num_boxes."""
        batch_idx, query_idx = matched_pairs(indices)
        predicted = boxes_cxcywh[batch_idx, query_idx]
        target = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        l1 = F.l1_loss(predicted, target, reduction="sum") / num_boxes
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(predicted), box_cxcywh_to_xyxy(target))
        return l1, (1 - giou).sum() / num_boxes

    def __call__(
        self,
        logits: torch.Tensor,
        boxes_cxcywh: torch.Tensor,
        targets: list[dict],
        indices: list[MatchIndices] | None = None,
        num_boxes: float | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[MatchIndices]]:
        """Loss over all stages.

        Args:
            logits: [K, B, Q, C]; boxes_cxcywh: [K, B, Q, 4].
            targets: per image ``class_labels`` [n_i] and ``boxes`` [n_i, 4] (normalised cxcywh).
            indices: a given assignment per stage (e.g. a teacher's); None to match afresh.
            num_boxes: normaliser of the box and focal terms; default: the batch's box count averaged
                over training processes (DETR's), so that DDP's gradient average equals one process
                on all processes' images. The training loop passes its own (``box_normaliser``).

        Returns:
            ({"det_cls", "det_bbox", "det_giou"} weighted and summed over stages, the assignment per stage).
        """
        if num_boxes is None:
            num_boxes = mean_over_processes(torch.tensor(float(sum(len(t["boxes"]) for t in targets)))).item()
        num_boxes = max(num_boxes, 1.0)
        # Matching and losses in float32, also when the forward pass ran under autocast.
        with torch.autocast(logits.device.type, enabled=False):
            return self._all_stages(logits.float(), boxes_cxcywh.float(), targets, indices, num_boxes)

    def _all_stages(
        self,
        logits: torch.Tensor,
        boxes_cxcywh: torch.Tensor,
        targets: list[dict],
        indices: list[MatchIndices] | None,
        num_boxes: float,
    ) -> tuple[dict[str, torch.Tensor], list[MatchIndices]]:
        terms = {"det_cls": 0.0, "det_bbox": 0.0, "det_giou": 0.0}
        used_indices = []
        for stage in range(logits.shape[0]):
            stage_indices = (
                indices[stage] if indices is not None else self.matcher(logits[stage], boxes_cxcywh[stage], targets)
            )
            used_indices.append(stage_indices)
            l1, giou = self.boxes(boxes_cxcywh[stage], targets, stage_indices, num_boxes)
            terms["det_cls"] = terms["det_cls"] + self.config.class_weight * self.classification(
                logits[stage], targets, stage_indices, num_boxes
            )
            terms["det_bbox"] = terms["det_bbox"] + self.config.bbox_weight * l1
            terms["det_giou"] = terms["det_giou"] + self.config.giou_weight * giou
        return terms, used_indices
