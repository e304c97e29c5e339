"""FitNet hint loss (Romero et al., ICLR 2015) on the DETR encoder features.

Per student level l, a learnable 1x1 conv regressor r_l maps the student map to the
teacher's width and the student imitates the teacher map:

    L = sum_l mean over images of  1 / (C_T |valid_l|) * sum_{c, valid h, w} (r_l(F^S_l) - F^T_l)^2

Romero's hint loss is 1/2 ||r(F^S) - F^T||^2 summed over the map; we normalise it per
element (the MSE that detection-KD reimplementations use) so that one weight means the same
on any map size, and padding is left out of the mean. The regressor is always there, as in
the paper (identity widths included), and is trained with the student.
"""

from __future__ import annotations

import torch
from torch import nn

from detrdistill.losses.baselines.levels import paired_levels


class FitNetLoss(nn.Module):
    """Hint loss over all student levels, with one 1x1 conv regressor per level.

    Args:
        student_dim, teacher_dim: channel widths of the distilled maps.
        num_student_levels: number of student feature levels.
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_student_levels: int):
        super().__init__()
        self.regressors = nn.ModuleList(
            nn.Conv2d(student_dim, teacher_dim, kernel_size=1) for _ in range(num_student_levels)
        )

    def forward(
        self,
        student_features: list[torch.Tensor],
        teacher_features: list[torch.Tensor],
        student_valid: list[torch.Tensor],
        targets: list[dict] | None = None,
    ) -> torch.Tensor:
        """student_features per level [B, D_S, H, W]; teacher_features per level [B, D_T, H', W'];
        student_valid per level [B, H, W] bool; targets unused (FitNet imitates everywhere).
        Returns the unweighted scalar loss."""
        loss = student_features[0].sum() * 0.0
        for level, (teacher, valid) in enumerate(paired_levels(student_features, teacher_features, student_valid)):
            squared = ((self.regressors[level](student_features[level]) - teacher) ** 2).sum(1)  # [B, H, W]
            num_valid = valid.flatten(1).sum(-1).clamp(min=1) * teacher.shape[1]
            loss = loss + ((squared * valid).flatten(1).sum(-1) / num_valid).mean()
        return loss
