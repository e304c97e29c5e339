"""Masked Generative Distillation (MGD, Yang et al., ECCV 2022) on the DETR encoder features.

Per student level: align the student map to the teacher's width (1x1 conv, only when the
widths differ), zero a random fraction ``mask_ratio`` (0.65) of its pixels (all channels of
a pixel together), regenerate the full teacher map with conv3x3-ReLU-conv3x3 and take the
squared error, summed over channels and pixels, averaged over images (MGD's sum form):

    L = sum_l 1/B * sum_{b, c, valid h, w} (G_l(M * align_l(F^S_l)) - F^T_l)^2

Padding counts as masked (the generator never sees padded features) and is left out of the
sum. The published weight for detection is alpha_mgd = 2e-5 (RetinaNet/Faster R-CNN configs).
The mask is drawn from torch's global RNG, which the training checkpoint saves, so a resumed
run draws the same masks.
"""

from __future__ import annotations

import torch
from torch import nn

from detrdistill.losses.baselines.levels import paired_levels


def random_keep_mask(
    batch: int, height: int, width: int, mask_ratio: float, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[B, 1, H, W] float: 0 on a random ``mask_ratio`` fraction of pixels, 1 elsewhere.

    As MGD's code: u ~ U[0, 1) per pixel, masked where u > 1 - mask_ratio.
    """
    uniform = torch.rand((batch, 1, height, width), generator=generator, device=device)
    return (uniform <= 1 - mask_ratio).float()


def generation_block(channels: int) -> nn.Sequential:
    """MGD's generator: conv3x3 -> ReLU -> conv3x3, width preserved."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
    )


class MGDLoss(nn.Module):
    """MGD over all student levels: one aligner and one generator per level.

    Args:
        student_dim, teacher_dim: channel widths of the distilled maps.
        num_student_levels: number of student feature levels.
        mask_ratio: fraction of student pixels zeroed before generation (MGD's lambda).
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_student_levels: int, mask_ratio: float = 0.65):
        super().__init__()
        self.mask_ratio = mask_ratio
        self.aligners = nn.ModuleList(
            nn.Conv2d(student_dim, teacher_dim, kernel_size=1) if student_dim != teacher_dim else nn.Identity()
            for _ in range(num_student_levels)
        )
        self.generators = nn.ModuleList(generation_block(teacher_dim) for _ in range(num_student_levels))

    def level_loss(
        self, level: int, student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """One level's sum-form loss for a given keep mask.

        student [B, D_S, H, W]; teacher [B, D_T, H, W]; valid [B, H, W] bool; keep [B, 1, H, W].
        """
        keep = keep * valid[:, None]
        generated = self.generators[level](self.aligners[level](student) * keep)
        squared = ((generated - teacher) ** 2) * valid[:, None]
        return squared.sum() / student.shape[0]

    def forward(
        self,
        student_features: list[torch.Tensor],
        teacher_features: list[torch.Tensor],
        student_valid: list[torch.Tensor],
        targets: list[dict] | None = None,
    ) -> torch.Tensor:
        """student_features per level [B, D_S, H, W]; teacher_features per level [B, D_T, H', W'];
        student_valid per level [B, H, W] bool; targets unused. Returns the unweighted scalar loss."""
        loss = student_features[0].sum() * 0.0
        for level, (teacher, valid) in enumerate(paired_levels(student_features, teacher_features, student_valid)):
            batch, _, height, width = student_features[level].shape
            keep = random_keep_mask(batch, height, width, self.mask_ratio, student_features[level].device)
            loss = loss + self.level_loss(level, student_features[level], teacher, valid, keep)
        return loss
