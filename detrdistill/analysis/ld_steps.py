"""Logits distillation step by step on one image (notebook 02's walk-through, section 4.1).

For one image and one student stage: the teacher-student matching cost and its parts, the
match the Hungarian solver gives, the teacher's own match to GT (which makes a teacher query
positive), and each LD term's value for that image. Every number comes from the loss's own
functions (``losses/logits.py``, ``matching.py``) on the image's own outputs, both models in
eval mode: the terms are what training would add for a batch of that one image, less dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detrdistill.config import LogitsDistillConfig, LossConfig
from detrdistill.distiller import teacher_logits_for
from detrdistill.losses.logits import (
    LogitsDistillation,
    soft_class_loss,
    stage_mapping,
    teacher_positive_mask,
    teacher_student_cost_terms,
)
from detrdistill.matching import HungarianMatcher, solve_each
from detrdistill.models.adapters import adapter_for


@dataclass
class LdStep:
    """One image at one student stage. M teacher queries, N student queries, n GT boxes.

    Attributes:
        student_stage, teacher_stage: 0-based (the teacher stage from the progressive map).
        cost_terms: {"l1", "giou"[, "class"]} each [M, N], the weighted parts of the
            teacher-student matching cost; cost: [M, N] their sum, what the solver minimises.
        pairs: [min(M, N), 2] (teacher query, student query), the optimal assignment of ``cost``.
        gt_cost_terms: {"class", "l1", "giou"} each [M, n], the teacher's own matching cost to GT.
        gt_pairs: [min(M, n), 2] (teacher query, GT index), the teacher's own match: its
            queries are the positives.
        positive: [M] bool, teacher query i is a positive.
        pair_class_kl: [P] the class KL of each pair (before class_weight), pair_box: [P] its
            box loss (bbox_weight L1 + giou_weight (1 - GIoU)), in ``pairs`` order.
        terms: {"ld_pos_cls", "ld_pos_box", "ld_neg_box"}, this image's LD terms at this stage
            as ``LogitsDistillation`` returns them (before lambda_LD).
    """

    student_stage: int
    teacher_stage: int
    cost_terms: dict[str, np.ndarray]
    cost: np.ndarray
    pairs: np.ndarray
    gt_cost_terms: dict[str, np.ndarray]
    gt_pairs: np.ndarray
    positive: np.ndarray
    pair_class_kl: np.ndarray
    pair_box: np.ndarray
    terms: dict[str, float]

    @property
    def pair_positive(self) -> np.ndarray:
        """[P] bool: the pair's teacher query is a positive (class + box KD), else box only."""
        return self.positive[self.pairs[:, 0]]

    def assignment_cost(self) -> float:
        """The total cost of the match: what no other assignment of ``cost`` goes below."""
        return float(self.cost[self.pairs[:, 0], self.pairs[:, 1]].sum())


@torch.no_grad()
def ld_step(teacher, student, batch: dict, image: int = 0, student_stage: int = -1,
            loss: LossConfig | None = None, logits: LogitsDistillConfig | None = None) -> LdStep:
    """LD on image ``image`` of a collated batch at ``student_stage``.

    ``loss`` gives the teacher's GT matching costs, ``logits`` the LD costs, weights and the
    progressive switch (the distilled run's ``config.loss`` and ``config.distill.logits``).
    """
    loss, logits = loss or LossConfig(), logits or LogitsDistillConfig()
    teacher_adapter, student_adapter = adapter_for(teacher), adapter_for(student)
    teacher.eval()
    student.eval()
    t = teacher_adapter(batch["pixel_values"], batch["pixel_mask"])
    s = student_adapter(batch["pixel_values"], batch["pixel_mask"])
    one = slice(image, image + 1)  # the image's own outputs: the forward pass treats images apart
    targets = batch["labels"][one]
    student_stage = student_stage % s.num_stages
    teacher_stage = stage_mapping(s.num_stages, t.num_stages, logits.progressive)[student_stage]
    t_logits = teacher_logits_for(student_adapter.class_head, t.logits[teacher_stage, one],
                                  teacher_adapter.class_head)
    t_boxes = t.boxes_cxcywh[teacher_stage, one]
    s_logits, s_boxes = s.logits[student_stage, one], s.boxes_cxcywh[student_stage, one]
    head = student_adapter.class_head

    cost_terms = teacher_student_cost_terms(t_logits, t_boxes, s_logits, s_boxes, head, logits)
    cost = sum(cost_terms.values())[0]
    ((teacher_idx, student_idx),) = solve_each([cost])
    matcher = HungarianMatcher.from_config(loss, teacher_adapter.class_head)
    gt_match = matcher(t.logits[teacher_stage, one], t_boxes, targets)
    num_gt = len(targets[0]["boxes"])
    gt_cost_terms = (matcher.cost_terms(t.logits[teacher_stage, one], t_boxes, targets) if num_gt else
                     {name: torch.zeros(1, t_boxes.shape[1], 0) for name in ("class", "l1", "giou")})
    positive = teacher_positive_mask(gt_match, t_logits.shape[1])[0]

    distillation = LogitsDistillation(logits, head)
    # One stage against one stage: the stage map of [1] x [1] is the identity, whatever ``progressive``.
    terms = distillation(s_logits[None], s_boxes[None], t_logits[None], t_boxes[None], [gt_match])
    return LdStep(
        student_stage=student_stage,
        teacher_stage=teacher_stage,
        cost_terms={name: term[0].numpy() for name, term in cost_terms.items()},
        cost=cost.numpy(),
        pairs=torch.stack([teacher_idx, student_idx], 1).numpy(),
        gt_cost_terms={name: term[0].numpy() for name, term in gt_cost_terms.items()},
        gt_pairs=torch.stack(gt_match[0], 1).numpy(),
        positive=positive.numpy(),
        pair_class_kl=soft_class_loss(s_logits[0, student_idx], t_logits[0, teacher_idx], head).numpy(),
        pair_box=distillation.pair_box_loss(s_boxes[0, student_idx], t_boxes[0, teacher_idx]).numpy(),
        terms={name: float(value) for name, value in terms.items()},
    )


def positives_table(step: LdStep, names: dict | None = None, labels: np.ndarray | None = None) -> str:
    """Why each positive is one, as Markdown: for each GT box the teacher query its own match
    gives it, with that pair's cost parts, and the student query LD pairs the positive with.
    ``labels`` [n] (GT class indices) and ``names`` (index -> name) label the GT rows."""
    student_of = dict(step.pairs.tolist())
    lines = ["| GT | teacher query | class cost | L1 cost | GIoU cost | total | student partner | class KL "
             "| box loss |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pair_row = {int(t): row for row, t in enumerate(step.pairs[:, 0])}
    for query, gt in step.gt_pairs.tolist():
        parts = [step.gt_cost_terms[name][query, gt] for name in ("class", "l1", "giou")]
        label = f"{gt}" if labels is None else f"{gt} ({(names or {}).get(int(labels[gt]), int(labels[gt]))})"
        row = pair_row.get(query)
        partner = student_of.get(query, "-")
        kl = f"{step.pair_class_kl[row]:.3f}" if row is not None else "-"
        box = f"{step.pair_box[row]:.3f}" if row is not None else "-"
        lines.append(f"| {label} | {query} | {parts[0]:.3f} | {parts[1]:.3f} | {parts[2]:.3f} | {sum(parts):.3f} "
                     f"| {partner} | {kl} | {box} |")
    return "\n".join(lines)
