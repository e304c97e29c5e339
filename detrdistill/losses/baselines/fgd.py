"""Focal and Global Distillation (FGD, Yang et al., CVPR 2022) on the DETR encoder features.

Per student level, with F^S aligned to the teacher's width (1x1 conv when widths differ)
and F^T the teacher map, following the authors' code (``mmdet/distillation/losses/fgd.py``):

- attention of a map F (T = temperature 0.5):
  spatial  A^S = HW * softmax_{hw}(mean_c |F| / T)        [B, H, W], mean 1 over valid pixels
  channel  A^C = C  * softmax_c(mean_{hw} |F| / T)        [B, C],    mean 1
- focal masks from the GT boxes: M_fg = 1 / (cells of the box) inside boxes (smallest box
  wins), M_bg = 1 / (background cells) outside them (``gt_masks.inverse_area_mask``);
- fg = 1/B sum M_fg A^S_T A^C_T (F^S - F^T)^2, bg the same with M_bg (the teacher's
  attention weights both);
- mask = 1/B (sum |A^C_S - A^C_T| + sum |A^S_S - A^S_T|);
- rela (global): each map plus its GcBlock context, out = F + T(sum_hw softmax(W_k F) F),
  T = conv1x1 -> LayerNorm -> ReLU -> conv1x1; rela = 1/B sum (out_S - out_T)^2. Student and
  teacher have their own GcBlock, both trainable (the teacher *detector* stays frozen).

    L = sum_l alpha fg + beta bg + gamma mask + lambda rela

Published weights (RetinaNet configs): alpha 1e-3, beta 5e-4, gamma 1e-3, lambda 5e-6, T 0.5.
Padding: softmaxes, channel means, the background mask and every sum run over real pixels only.
"""

from __future__ import annotations

import torch
from torch import nn

from detrdistill.losses.baselines.gt_masks import inverse_area_mask
from detrdistill.losses.baselines.levels import paired_levels


def fgd_attention(features: torch.Tensor, valid: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial [B, H, W] and channel [B, C] attention of a map [B, C, H, W] (valid [B, H, W] bool).

    Spatial: HW_valid * softmax over real pixels of mean_c |F| / T (0 on padding, so it sums to
    the number of real pixels); channel: C * softmax over channels of the real-pixel mean of |F| / T.
    """
    batch, channels, height, width = features.shape
    magnitude = features.abs()
    num_valid = valid.flatten(1).sum(-1).clamp(min=1)  # [B]
    spatial_logits = (magnitude.mean(1) / temperature).masked_fill(~valid, float("-inf"))
    spatial = spatial_logits.flatten(1).softmax(-1).view(batch, height, width) * num_valid.view(batch, 1, 1)
    channel_mean = (magnitude * valid[:, None]).flatten(2).sum(-1) / num_valid[:, None]  # [B, C]
    channel = channels * (channel_mean / temperature).softmax(-1)
    return spatial, channel


def foreground_background_masks(targets: list[dict], valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FGD's focal masks on the grid of ``valid`` [B, H, W]: (M_fg, M_bg), both [B, H, W] float.

    M_fg = 1 / box cells inside GT boxes; M_bg = 1 / (number of real background cells) on real
    cells outside every box, 0 elsewhere (all zeros when an image has no background cell).
    """
    foreground = inverse_area_mask(targets, valid)
    background = ((foreground == 0) & valid).float()
    background = background / background.flatten(1).sum(-1).clamp(min=1).view(-1, 1, 1)
    return foreground, background


class GlobalContext(nn.Module):
    """GcBlock (Cao et al. 2019) as FGD uses it: x + transform(attention-pooled context of x).

    Args: channels: width C of the map.
    """

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // 2, 1)
        self.context_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        # FGD's reset_parameters: kaiming (fan_in) context conv; zero last transform conv so
        # that out = x at initialisation.
        nn.init.kaiming_normal_(self.context_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.context_mask.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] (valid [B, H, W] bool, pooling over real pixels only) -> [B, C, H, W]."""
        batch, channels = features.shape[:2]
        weights = self.context_mask(features).flatten(1).masked_fill(~valid.flatten(1), float("-inf")).softmax(-1)
        context = torch.einsum("bcn,bn->bc", features.flatten(2), weights).view(batch, channels, 1, 1)
        return features + self.transform(context)


class FGDLevel(nn.Module):
    """FGD's modules for one student level: aligner and the two GcBlocks."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.align = nn.Conv2d(student_dim, teacher_dim, kernel_size=1) if student_dim != teacher_dim else nn.Identity()
        self.student_context = GlobalContext(teacher_dim)
        self.teacher_context = GlobalContext(teacher_dim)


class FGDLoss(nn.Module):
    """FGD over all student levels.

    Args:
        student_dim, teacher_dim: channel widths of the distilled maps.
        num_student_levels: number of student feature levels (one ``FGDLevel`` each).
        temperature, alpha, beta, gamma, lambda_: FGD's hyper-parameters (module docstring).
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_student_levels: int, temperature: float = 0.5,
                 alpha: float = 1e-3, beta: float = 5e-4, gamma: float = 1e-3, lambda_: float = 5e-6):
        super().__init__()
        self.temperature = temperature
        self.weights = {"fg": alpha, "bg": beta, "mask": gamma, "rela": lambda_}
        self.levels = nn.ModuleList(FGDLevel(student_dim, teacher_dim) for _ in range(num_student_levels))

    def level_terms(
        self, level: int, student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, targets: list[dict]
    ) -> dict[str, torch.Tensor]:
        """Unweighted fg, bg, mask and rela terms of one level (scalars).

        student [B, D_S, H, W]; teacher [B, D_T, H, W] (detached); valid [B, H, W] bool;
        targets per image {"boxes": [n, 4] normalised cxcywh}.
        """
        modules = self.levels[level]
        student = modules.align(student)
        batch = student.shape[0]
        spatial_t, channel_t = fgd_attention(teacher, valid, self.temperature)
        spatial_s, channel_s = fgd_attention(student, valid, self.temperature)
        foreground, background = foreground_background_masks(targets, valid)
        attention = spatial_t[:, None] * channel_t[:, :, None, None]  # [B, C, H, W]
        squared = (student - teacher) ** 2
        real = valid[:, None]
        return {
            "fg": (foreground[:, None] * attention * squared).sum() / batch,
            "bg": (background[:, None] * attention * squared).sum() / batch,
            "mask": ((channel_s - channel_t).abs().sum() + ((spatial_s - spatial_t).abs() * valid).sum()) / batch,
            "rela": (((modules.student_context(student, valid) - modules.teacher_context(teacher, valid)) ** 2)
                     * real).sum() / batch,
        }

    def parts(
        self,
        student_features: list[torch.Tensor],
        teacher_features: list[torch.Tensor],
        student_valid: list[torch.Tensor],
        targets: list[dict],
    ) -> dict[str, torch.Tensor]:
        """{"fg": alpha fg, "bg": beta bg, "mask": gamma mask, "rela": lambda rela}, each summed
        over levels (before the overall weight). student_features per level [B, D_S, H, W];
        teacher_features per level [B, D_T, H', W']; student_valid per level [B, H, W] bool;
        targets: the batch's labels."""
        parts = dict.fromkeys(self.weights, student_features[0].sum() * 0.0)
        for level, (teacher, valid) in enumerate(paired_levels(student_features, teacher_features, student_valid)):
            terms = self.level_terms(level, student_features[level], teacher, valid, targets)
            parts = {name: parts[name] + self.weights[name] * value for name, value in terms.items()}
        return parts

    def forward(
        self,
        student_features: list[torch.Tensor],
        teacher_features: list[torch.Tensor],
        student_valid: list[torch.Tensor],
        targets: list[dict],
    ) -> torch.Tensor:
        """The sum of ``parts``: FGD's loss before the overall weight."""
        return sum(self.parts(student_features, teacher_features, student_valid, targets).values())
