"""Fine-grained Feature Imitation (FGFI, Wang et al., CVPR 2019) with a GT-box mask for DETRs.

FGFI imitates the teacher only at "near-object" locations: in the original, the cells whose
anchors reach IoU >= 0.5 x (the best anchor IoU) with some GT box. DETRs have no anchors, so
the imitation mask I is the GT boxes themselves: 1 on every real cell a GT box overlaps, 0
elsewhere and on padding (``gt_masks.gt_box_mask``). Per student level, through an adaptation
layer f_adap (a 3x3 conv, FGFI's "full convolution adaptation layer"):

    L = sum_l 1 / (2 N_l) * sum_{b, c, h, w} I (f_adap(F^S_l) - F^T_l)^2,   N_l = sum I (cells of the batch)

and 0 on a level whose batch has no GT cell. FGFI's code follows the conv with a ReLU, fine
for its VGG/ResNet maps (non-negative after ReLU) but not here: DETR encoder maps come out of
a LayerNorm and are signed, so a ReLU would leave half the targets unreachable; we drop it.
Published weight: lambda = 0.01.
"""

from __future__ import annotations

import torch
from torch import nn

from detrdistill.losses.baselines.gt_masks import gt_box_mask
from detrdistill.losses.baselines.levels import paired_levels


class FGFILoss(nn.Module):
    """FGFI imitation over all student levels, one 3x3 conv adaptation layer per level.

    Args:
        student_dim, teacher_dim: channel widths of the distilled maps.
        num_student_levels: number of student feature levels.
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_student_levels: int):
        super().__init__()
        self.adapters = nn.ModuleList(
            nn.Conv2d(student_dim, teacher_dim, kernel_size=3, padding=1) for _ in range(num_student_levels)
        )

    def forward(
        self,
        student_features: list[torch.Tensor],
        teacher_features: list[torch.Tensor],
        student_valid: list[torch.Tensor],
        targets: list[dict],
    ) -> torch.Tensor:
        """student_features per level [B, D_S, H, W]; teacher_features per level [B, D_T, H', W'];
        student_valid per level [B, H, W] bool; targets per image {"boxes": [n, 4] normalised cxcywh}.
        Returns the unweighted scalar loss."""
        loss = student_features[0].sum() * 0.0
        for level, (teacher, valid) in enumerate(paired_levels(student_features, teacher_features, student_valid)):
            imitation = gt_box_mask(targets, valid)  # [B, H, W]
            num_cells = imitation.sum()
            if num_cells == 0:
                continue
            squared = ((self.adapters[level](student_features[level]) - teacher) ** 2).sum(1)  # [B, H, W]
            loss = loss + (squared * imitation).sum() / (2 * num_cells)
        return loss
