"""Hungarian-matching logits distillation (paper section 4.1, eq. 2-4).

Per image and decoder stage, all M teacher predictions are matched one-to-one to all N
student predictions. A pair whose teacher query is a *positive* (the teacher's own
Hungarian match assigns it to a ground-truth box at that stage) is distilled on class and
box; a pair whose teacher query is a *negative* on box only (the paper's footnote 1: a
teacher negative need not mean background). With ``all_pairs`` (the public release) every
pair gets class and box terms, with no split.

By default (``normalise: per_term``) each term is the mean over its own pairs in the batch,
so the many negatives do not swamp the few positives. With ``normalise: matched`` every term
is its sum over the number of matched pairs, as the release normalises; the positives then
weigh by their share of the pairs. With several processes, pairs are counted over all of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from detrdistill.box_ops import batched_generalized_box_iou, box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from detrdistill.config import LogitsDistillConfig
from detrdistill.distributed import mean_over_processes
from detrdistill.matching import MatchIndices, solve_each


def stage_mapping(student_stages: int, teacher_stages: int, progressive: bool = True) -> list[int]:
    """0-based teacher stage that teaches each student stage.

    Progressive (paper): the teacher's K_T stages are grouped into K_S groups; student stage
    k (1-based) learns from teacher stage ceil(k * K_T / K_S), so the last student stage
    always learns from the last teacher stage. Otherwise (Table 7's alternative) every
    student stage learns from the teacher's last stage.
    """
    if not progressive:
        return [teacher_stages - 1] * student_stages
    return [math.ceil(k * teacher_stages / student_stages) - 1 for k in range(1, student_stages + 1)]


def _teacher_entropy(teacher_logits: torch.Tensor, class_head: str) -> torch.Tensor:
    """Entropy of the teacher's class distribution per prediction: [..., C] -> [...]."""
    if class_head == "softmax":
        return -(teacher_logits.softmax(-1) * teacher_logits.log_softmax(-1)).sum(-1)
    prob = teacher_logits.sigmoid()
    return F.binary_cross_entropy_with_logits(teacher_logits, prob, reduction="none").sum(-1)


def soft_class_cost(student_logits: torch.Tensor, teacher_logits: torch.Tensor, class_head: str) -> torch.Tensor:
    """KL divergence of every teacher-student pair: student [B, N, C], teacher [B, M, C] -> [B, M, N].

    Sigmoid heads: per-class Bernoulli KL summed over classes, via
    BCE(s; p) = softplus(s) - p * s minus the teacher's own entropy. Softmax heads: KL of
    the categorical distributions. KL rather than plain cross-entropy so that a student
    equal to its teacher costs exactly 0 (the gradients are the same).
    """
    if class_head == "softmax":
        cross_entropy = -teacher_logits.softmax(-1) @ student_logits.log_softmax(-1).transpose(1, 2)
    else:
        teacher_prob = teacher_logits.sigmoid()
        cross_entropy = F.softplus(student_logits).sum(-1)[:, None, :] - teacher_prob @ student_logits.transpose(1, 2)
    return cross_entropy - _teacher_entropy(teacher_logits, class_head)[:, :, None]


def soft_class_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, class_head: str) -> torch.Tensor:
    """KL divergence of already paired rows: [P, C], [P, C] -> [P] (see ``soft_class_cost``)."""
    if class_head == "softmax":
        cross_entropy = -(teacher_logits.softmax(-1) * student_logits.log_softmax(-1)).sum(-1)
    else:
        cross_entropy = F.binary_cross_entropy_with_logits(
            student_logits, teacher_logits.sigmoid(), reduction="none"
        ).sum(-1)
    return cross_entropy - _teacher_entropy(teacher_logits, class_head)


@torch.no_grad()
def teacher_student_cost_terms(
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    class_head: str,
    config: LogitsDistillConfig,
) -> dict[str, torch.Tensor]:
    """The weighted parts of LD's matching cost, each [B, M, N]: {"l1": bbox_cost * L1,
    "giou": -giou_cost * GIoU, "class": class_cost * KL} ("class" only when class_cost is set).
    Their sum is the cost ``match_teacher_student`` solves; inputs as there."""
    terms = {
        "l1": config.bbox_cost * torch.cdist(teacher_boxes, student_boxes, p=1),
        "giou": -config.giou_cost
        * batched_generalized_box_iou(box_cxcywh_to_xyxy(teacher_boxes), box_cxcywh_to_xyxy(student_boxes)),
    }
    if config.class_cost:  # without it, a box-only match needs no class targets (see needs_class_targets)
        terms["class"] = config.class_cost * soft_class_cost(student_logits, teacher_logits, class_head)
    return terms


@torch.no_grad()
def match_teacher_student(
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    class_head: str,
    config: LogitsDistillConfig,
) -> MatchIndices:
    """One bipartite match per image: [B, M, *] teacher vs [B, N, *] student predictions ->
    per image (teacher indices, student indices), min(M, N) pairs each."""
    terms = teacher_student_cost_terms(teacher_logits, teacher_boxes, student_logits, student_boxes, class_head, config)
    cost = terms["l1"] + terms["giou"] + terms.get("class", 0)
    return solve_each(list(cost.detach().float().cpu()))


def teacher_positive_mask(teacher_gt_indices: MatchIndices, num_teacher_queries: int) -> torch.Tensor:
    """[B, M] bool: True for teacher queries that the teacher's own match assigns to a GT box."""
    mask = torch.zeros(len(teacher_gt_indices), num_teacher_queries, dtype=torch.bool)
    for image, (queries, _) in enumerate(teacher_gt_indices):
        mask[image, queries] = True
    return mask


class LogitsDistillation:
    """L_logitsKD summed over student stages (eq. 4), returned as named, weighted terms.

    Args:
        config: switches (pos_cls, pos_reg, neg_reg, progressive, all_pairs), costs, weights.
        class_head: the student's and teacher's class head type (they must agree).
    """

    def __init__(self, config: LogitsDistillConfig, class_head: str):
        self.config, self.class_head = config, class_head

    @property
    def needs_class_targets(self) -> bool:
        """Whether the teacher's logits must be class targets in the student's convention: for
        the class term (pos_cls) and for the class part of the matching cost (class_cost)."""
        return self.config.pos_cls or self.config.class_cost != 0

    def __call__(
        self,
        student_logits: torch.Tensor,
        student_boxes: torch.Tensor,
        teacher_logits: torch.Tensor,
        teacher_boxes: torch.Tensor,
        teacher_gt_indices: list[MatchIndices],
    ) -> dict[str, torch.Tensor]:
        """student [K_S, B, N, *], teacher [K_T, B, M, *]; teacher_gt_indices: the teacher's
        Hungarian match to ground truth at each of its K_T stages.

        Returns {"ld_pos_cls", "ld_pos_box", "ld_neg_box"} (each summed over student stages).
        """
        # Matching and losses in float32, also when the forward pass ran under autocast.
        with torch.autocast(student_logits.device.type, enabled=False):
            return self._all_stages(
                student_logits.float(), student_boxes.float(), teacher_logits.float(), teacher_boxes.float(),
                teacher_gt_indices,
            )

    def _all_stages(
        self,
        student_logits: torch.Tensor,
        student_boxes: torch.Tensor,
        teacher_logits: torch.Tensor,
        teacher_boxes: torch.Tensor,
        teacher_gt_indices: list[MatchIndices],
    ) -> dict[str, torch.Tensor]:
        config = self.config
        zero = student_logits.sum() * 0.0
        terms = {"ld_pos_cls": zero, "ld_pos_box": zero, "ld_neg_box": zero}
        mapping = stage_mapping(student_logits.shape[0], teacher_logits.shape[0], config.progressive)
        for student_stage, teacher_stage in enumerate(mapping):
            t_logits, t_boxes = teacher_logits[teacher_stage], teacher_boxes[teacher_stage]
            s_logits, s_boxes = student_logits[student_stage], student_boxes[student_stage]
            pairs = match_teacher_student(t_logits, t_boxes, s_logits, s_boxes, self.class_head, config)
            batch_idx = torch.cat([torch.full_like(t, i) for i, (t, _) in enumerate(pairs)])
            teacher_idx = torch.cat([t for t, _ in pairs])
            student_idx = torch.cat([s for _, s in pairs])
            positive = teacher_positive_mask(teacher_gt_indices[teacher_stage], t_logits.shape[1])
            is_positive = positive[batch_idx, teacher_idx]
            if config.all_pairs:
                is_positive = torch.ones_like(is_positive)
            device = s_logits.device
            batch_idx, teacher_idx, student_idx = batch_idx.to(device), teacher_idx.to(device), student_idx.to(device)
            box_loss = self.pair_box_loss(s_boxes[batch_idx, student_idx], t_boxes[batch_idx, teacher_idx])
            is_positive = is_positive.to(device)
            if config.normalise == "per_term":
                positives, negatives = is_positive.sum(), (~is_positive).sum()
            else:  # "matched": one denominator for both, the stage's matched pairs
                positives = negatives = is_positive.numel()
            if config.pos_cls:
                class_loss = soft_class_loss(s_logits[batch_idx, student_idx], t_logits[batch_idx, teacher_idx],
                                             self.class_head)
                terms["ld_pos_cls"] = terms["ld_pos_cls"] + config.class_weight * _sum_over_pairs(
                    class_loss, is_positive, positives)
            if config.pos_reg:
                terms["ld_pos_box"] = terms["ld_pos_box"] + _sum_over_pairs(box_loss, is_positive, positives)
            if config.neg_reg and not config.all_pairs:
                terms["ld_neg_box"] = terms["ld_neg_box"] + _sum_over_pairs(box_loss, ~is_positive, negatives)
        return terms

    def pair_box_loss(self, student_boxes: torch.Tensor, teacher_boxes: torch.Tensor) -> torch.Tensor:
        """Per-pair weighted L1 + (1 - GIoU): [P, 4], [P, 4] -> [P]."""
        l1 = (student_boxes - teacher_boxes).abs().sum(-1)
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(student_boxes), box_cxcywh_to_xyxy(teacher_boxes))
        return self.config.bbox_weight * l1 + self.config.giou_weight * (1 - giou)


def _sum_over_pairs(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """Sum of values[mask] divided by ``count`` pairs; 0 (still in the graph) when the mask is empty.

    The count is averaged over training processes (like DETR's num_boxes), so that DDP's
    gradient average is the mean over every process's pairs.
    """
    count = torch.as_tensor(count, dtype=values.dtype, device=values.device)
    return (values * mask).sum() / mean_over_processes(count).clamp(min=1)
