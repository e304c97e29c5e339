"""The teacher's queries run through a student's decoder (query-prior assignment distillation, 4.3).

AD trains the student to answer the teacher's queries with the teacher's assignment: teacher
query i (matched to GT j by the teacher) must predict GT j in the student too. This module
runs that extra query group at inference and measures how well the student honours it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detrdistill.analysis.draw import batch_image, draw_boxes, new_figure, show_image, to_pixels_xyxy
from detrdistill.box_ops import box_cxcywh_to_xyxy, box_iou
from detrdistill.config import LossConfig
from detrdistill.matching import HungarianMatcher
from detrdistill.models.adapters import adapter_for
from detrdistill.training.checkpoint import CHECKPOINT_NAME, read_checkpoint

QUERY_MAP_KEY = "assignment.query_map."


def load_query_map(run_dir: str | Path | None, teacher_dim: int, student_dim: int) -> nn.Module:
    """AD's teacher -> student query map from a distilled run's checkpoint (identity when the
    widths are equal). Without a checkpoint holding one, widths must match."""
    if teacher_dim == student_dim:
        return nn.Identity()
    path = None if run_dir is None else Path(run_dir) / CHECKPOINT_NAME
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"teacher queries are {teacher_dim}-wide, the student's {student_dim}-wide: the learned query map lives "
            f"in a distilled run's {CHECKPOINT_NAME}, and {path} does not exist. Pass a run trained with "
            "distill.assignment.enabled"
        )
    heads = read_checkpoint(path)["modules"].get("distill_heads", {})
    state = {k[len(QUERY_MAP_KEY):]: v for k, v in heads.items() if k.startswith(QUERY_MAP_KEY)}
    if not state:
        raise ValueError(f"{path} holds no {QUERY_MAP_KEY}*: the run was trained without assignment distillation")
    query_map = nn.Linear(teacher_dim, student_dim)
    query_map.load_state_dict(state)
    return query_map


@dataclass
class TeacherQueryAnswers:
    """One image: the student's last-stage answers to the teacher's queries. M = teacher queries.

    Attributes:
        boxes_xyxy: [M, 4] px, the student's boxes for the teacher queries.
        teacher_boxes_xyxy: [M, 4] px, the teacher's own boxes.
        assigned_queries, assigned_gt: [P] the teacher's last-stage match (query i <-> GT j).
        iou: [P] IoU of the student's box for assigned query i with GT j (what AD trains).
        gt_boxes_xyxy: [n, 4] px.
    """

    boxes_xyxy: np.ndarray
    teacher_boxes_xyxy: np.ndarray
    assigned_queries: np.ndarray
    assigned_gt: np.ndarray
    iou: np.ndarray
    gt_boxes_xyxy: np.ndarray


@torch.no_grad()
def answer_teacher_queries(student, teacher, batch: dict, query_map: nn.Module | None = None,
                           loss: LossConfig | None = None) -> list[TeacherQueryAnswers]:
    """Run the teacher's learned queries (through ``query_map``) in the student's decoder on a
    collated batch, next to the teacher's own assignment of those queries to GT."""
    loss = loss or LossConfig()
    student_adapter, teacher_adapter = adapter_for(student), adapter_for(teacher)
    student.eval()
    teacher.eval()
    t = teacher_adapter(batch["pixel_values"], batch["pixel_mask"])
    s = student_adapter(batch["pixel_values"], batch["pixel_mask"])
    queries = (query_map or nn.Identity())(t.query_embeddings)
    decoded = student_adapter.decode(s, queries)
    matcher = HungarianMatcher.from_config(loss, teacher_adapter.class_head)
    matches = matcher(t.logits[-1], t.boxes_cxcywh[-1], batch["labels"])
    size, result = batch["padded_size"], []
    for image, (query_idx, gt_idx) in enumerate(matches):
        boxes = decoded.boxes_cxcywh[-1, image]
        gt = batch["labels"][image]["boxes"]
        iou = box_iou(box_cxcywh_to_xyxy(boxes[query_idx]), box_cxcywh_to_xyxy(gt[gt_idx]))[0].diagonal()
        result.append(TeacherQueryAnswers(
            boxes_xyxy=to_pixels_xyxy(boxes, size),
            teacher_boxes_xyxy=to_pixels_xyxy(t.boxes_cxcywh[-1, image], size),
            assigned_queries=query_idx.numpy(), assigned_gt=gt_idx.numpy(), iou=iou.numpy(),
            gt_boxes_xyxy=to_pixels_xyxy(gt, size),
        ))
    return result


def mean_assigned_iou(answers: list[TeacherQueryAnswers]) -> float:
    """Mean IoU between the student's answers to teacher-assigned queries and their GT boxes."""
    values = np.concatenate([a.iou for a in answers]) if answers else np.zeros(0)
    return float(values.mean()) if len(values) else float("nan")


def plot_teacher_query_answers(batch: dict, rows: dict[str, list[TeacherQueryAnswers]]):
    """One row per student (dict key), one column per image: for each teacher-assigned query
    the teacher's box (green) and the student's answer (orange, dashed); GT white."""
    figure, axes = new_figure(len(rows), len(batch["meta"]))
    for row, (name, answers) in enumerate(rows.items()):
        for col, answer in enumerate(answers):
            ax = axes[row, col]
            show_image(ax, batch_image(batch, col), f"IoU to GT {answer.iou.mean():.2f}" if len(answer.iou) else None)
            draw_boxes(ax, answer.gt_boxes_xyxy, color="white", linewidth=1.0)
            draw_boxes(ax, answer.teacher_boxes_xyxy[answer.assigned_queries], color="tab:green", linewidth=1.2)
            draw_boxes(ax, answer.boxes_xyxy[answer.assigned_queries], color="tab:orange", linestyle="--")
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    figure.suptitle("Teacher queries in the student decoder: teacher box (green) vs student answer (orange)",
                    fontsize=9)
    return figure
