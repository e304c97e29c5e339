"""What Hungarian-matching logits distillation pairs up, per image and decoder stage (section 4.1).

Uses the loss's own pieces (``losses/logits.py``): the teacher-student bipartite match, the
teacher's positives (queries its own Hungarian match assigns to GT), the progressive stage map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detrdistill.analysis.draw import batch_image, draw_boxes, new_figure, show_image, to_pixels_xyxy
from detrdistill.config import LogitsDistillConfig, LossConfig
from detrdistill.distiller import teacher_logits_for
from detrdistill.losses.logits import match_teacher_student, stage_mapping, teacher_positive_mask
from detrdistill.matching import HungarianMatcher
from detrdistill.models.adapters import adapter_for


@dataclass
class LdPairs:
    """One image's teacher-student pairs at one student stage. P = min(M, N) pairs.

    Attributes:
        student_stage, teacher_stage: 0-based stages (teacher stage from the progressive map).
        teacher_boxes_xyxy: [M, 4] px; student_boxes_xyxy: [N, 4] px.
        pairs: [P, 2] (teacher query, student query).
        positive: [P] bool, the pair's teacher query is a teacher positive (class + box KD);
            the others are negatives (box KD only).
        gt_boxes_xyxy: [n, 4] px.
    """

    student_stage: int
    teacher_stage: int
    teacher_boxes_xyxy: np.ndarray
    student_boxes_xyxy: np.ndarray
    pairs: np.ndarray
    positive: np.ndarray
    gt_boxes_xyxy: np.ndarray


@torch.no_grad()
def ld_pairs(teacher, student, batch: dict, student_stage: int = -1, loss: LossConfig | None = None,
             logits: LogitsDistillConfig | None = None) -> list[LdPairs]:
    """The pairs LD distils at ``student_stage`` for every image of a collated batch.

    ``loss`` gives the teacher's GT matching costs, ``logits`` the LD costs and the
    progressive switch (the student run's ``config.loss`` and ``config.distill.logits``).
    """
    loss, logits = loss or LossConfig(), logits or LogitsDistillConfig()
    teacher_adapter, student_adapter = adapter_for(teacher), adapter_for(student)
    teacher.eval()
    student.eval()
    t = teacher_adapter(batch["pixel_values"], batch["pixel_mask"])
    s = student_adapter(batch["pixel_values"], batch["pixel_mask"])
    student_stage = student_stage % s.num_stages
    teacher_stage = stage_mapping(s.num_stages, t.num_stages, logits.progressive)[student_stage]
    t_logits = teacher_logits_for(student_adapter.class_head, t.logits[teacher_stage], teacher_adapter.class_head)
    pairs = match_teacher_student(t_logits, t.boxes_cxcywh[teacher_stage], s.logits[student_stage],
                                  s.boxes_cxcywh[student_stage], student_adapter.class_head, logits)
    matcher = HungarianMatcher.from_config(loss, teacher_adapter.class_head)
    gt_matches = matcher(t.logits[teacher_stage], t.boxes_cxcywh[teacher_stage], batch["labels"])
    positive = teacher_positive_mask(gt_matches, t.logits.shape[2])
    size = batch["padded_size"]
    return [
        LdPairs(
            student_stage=student_stage,
            teacher_stage=teacher_stage,
            teacher_boxes_xyxy=to_pixels_xyxy(t.boxes_cxcywh[teacher_stage, image], size),
            student_boxes_xyxy=to_pixels_xyxy(s.boxes_cxcywh[student_stage, image], size),
            pairs=torch.stack([teacher_idx, student_idx], 1).numpy(),
            positive=positive[image, teacher_idx].numpy(),
            gt_boxes_xyxy=to_pixels_xyxy(batch["labels"][image]["boxes"], size),
        )
        for image, (teacher_idx, student_idx) in enumerate(pairs)
    ]


def pair_distances(per_image: list[LdPairs]) -> dict[str, float]:
    """Mean L1 distance (px, summed over the 4 coordinates) between paired teacher and student
    boxes, over positive and over negative pairs of all images: how far LD must move the student."""
    distances = {"positive": [], "negative": []}
    for item in per_image:
        gap = np.abs(item.teacher_boxes_xyxy[item.pairs[:, 0]] - item.student_boxes_xyxy[item.pairs[:, 1]]).sum(1)
        distances["positive"] += gap[item.positive].tolist()
        distances["negative"] += gap[~item.positive].tolist()
    return {kind: float(np.mean(values)) if values else float("nan") for kind, values in distances.items()}


def _centre(box: np.ndarray) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def plot_ld_pairs(batch: dict, per_image: list[LdPairs]):
    """Per image two panels: positive pairs (teacher box green, its student partner orange
    dashed, a line between the centres) and negative pairs (box KD only), GT in white."""
    figure, axes = new_figure(2, len(per_image))
    for col, item in enumerate(per_image):
        image = batch_image(batch, col)
        for row, (kind, selected) in enumerate((("positive", item.positive), ("negative", ~item.positive))):
            ax = axes[row, col]
            show_image(ax, image, f"{kind} pairs ({int(selected.sum())})" + (
                f"\nstudent stage {item.student_stage + 1} <- teacher {item.teacher_stage + 1}" if row == 0 else ""))
            draw_boxes(ax, item.gt_boxes_xyxy, color="white", linewidth=1.0)
            chosen = item.pairs[selected]
            draw_boxes(ax, item.teacher_boxes_xyxy[chosen[:, 0]], color="tab:green", linewidth=1.2)
            draw_boxes(ax, item.student_boxes_xyxy[chosen[:, 1]], color="tab:orange", linestyle="--", linewidth=1.0)
            for teacher_query, student_query in chosen:
                (x0, y0), (x1, y1) = _centre(item.teacher_boxes_xyxy[teacher_query]), _centre(
                    item.student_boxes_xyxy[student_query])
                ax.plot([x0, x1], [y0, y1], color="yellow", linewidth=0.6)
            ax.set_xlim(-0.5, image.shape[1] - 0.5)
            ax.set_ylim(image.shape[0] - 0.5, -0.5)
    figure.suptitle("LD pairs: teacher (green) <-> student (orange, dashed); GT white", fontsize=9)
    return figure
