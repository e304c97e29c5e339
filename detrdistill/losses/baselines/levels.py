"""Student/teacher level pairing shared by the baselines: the same rule as feature distillation.

Each student level is paired with the teacher level of the same spatial size, else the
closest in area, resized to the student's grid (``losses/features.py``: ``pair_levels``,
area-average down, bilinear up). The teacher side is always detached.
"""

from __future__ import annotations

import torch

from detrdistill.losses.features import _align, pair_levels


def paired_levels(
    student_features: list[torch.Tensor], teacher_features: list[torch.Tensor], student_valid: list[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per student level: (teacher map [B, D_T, H_l, W_l] on the student's grid, valid [B, H_l, W_l] bool).

    Args:
        student_features: per level [B, D_S, H_l, W_l].
        teacher_features: per level [B, D_T, H'_l, W'_l].
        student_valid: per level [B, H_l, W_l] bool, False on padding (the student record's
            ``feature_masks``; resized nearest-style if a level's grid differs).
    """
    student_shapes = [tuple(f.shape[-2:]) for f in student_features]
    teacher_shapes = [tuple(f.shape[-2:]) for f in teacher_features]
    pairs = []
    with torch.no_grad():
        for level, teacher_level in enumerate(pair_levels(student_shapes, teacher_shapes)):
            size = student_shapes[level]
            teacher = _align(teacher_features[teacher_level].detach(), size)
            valid = student_valid[level].bool()
            if tuple(valid.shape[-2:]) != size:
                valid = _align(valid[:, None].float(), size)[:, 0] > 0.5
            pairs.append((teacher, valid))
    return pairs
