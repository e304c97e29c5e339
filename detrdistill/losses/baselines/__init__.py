"""Comparison feature-KD baselines (paper Tables 1 and 3): FitNet, MGD, FGD, FGFI.

Each is an ``nn.Module`` with the same call,
``loss(student_features, teacher_features, student_valid, targets) -> scalar``, reading only
``DetrRecord`` maps (per level [B, D, H_l, W_l], padding masks [B, H_l, W_l]) and the batch's
targets (boxes normalised cxcywh). Its trainable layers (adapters, generators, GcBlocks)
live in the distiller's ``DistillHeads``. The distiller multiplies the result by
``BaselineKDConfig.resolved_weight()`` and logs it as ``kd_<method>``.
"""

from __future__ import annotations

from torch import nn

from detrdistill.config import BASELINE_METHODS, BaselineKDConfig, ConfigError
from detrdistill.losses.baselines.fgd import FGDLoss
from detrdistill.losses.baselines.fgfi import FGFILoss
from detrdistill.losses.baselines.fitnet import FitNetLoss
from detrdistill.losses.baselines.mgd import MGDLoss

__all__ = ["FGDLoss", "FGFILoss", "FitNetLoss", "MGDLoss", "build_baseline"]


def build_baseline(
    config: BaselineKDConfig, student_dim: int, teacher_dim: int, num_student_levels: int
) -> nn.Module | None:
    """The loss module of ``config.method`` (None for "none").

    Args:
        config: the ``distill.baseline`` section.
        student_dim, teacher_dim: channel widths of the distilled maps (the models' d_model).
        num_student_levels: number of student feature levels (one set of layers each).
    """
    if config.method not in BASELINE_METHODS:
        raise ConfigError(f"distill.baseline.method {config.method!r} is not one of {BASELINE_METHODS}")
    if config.method == "fitnet":
        return FitNetLoss(student_dim, teacher_dim, num_student_levels)
    if config.method == "mgd":
        return MGDLoss(student_dim, teacher_dim, num_student_levels, config.mgd_mask_ratio)
    if config.method == "fgd":
        return FGDLoss(student_dim, teacher_dim, num_student_levels, config.fgd_temperature,
                       config.fgd_alpha, config.fgd_beta, config.fgd_gamma, config.fgd_lambda)
    if config.method == "fgfi":
        return FGFILoss(student_dim, teacher_dim, num_student_levels)
    return None
