"""Comparison feature-KD baselines (paper Tables 1 and 3): FitNet, MGD, FGD, FGFI.

Each is an ``nn.Module`` with the same call,
``loss(student_features, teacher_features, student_valid, targets) -> scalar``, reading only
``DetrRecord`` maps (per level [B, D, H_l, W_l], padding masks [B, H_l, W_l]) and the batch's
targets (boxes normalised cxcywh). Its trainable layers (adapters, generators, GcBlocks)
live in the distiller's ``DistillHeads``. ``baseline_terms`` calls it on two records and
returns the named, weighted terms the distiller logs: ``kd_<method>``, or FGD's parts
``kd_fgd_fg``, ``kd_fgd_bg``, ``kd_fgd_mask``, ``kd_fgd_rela``.
"""

from __future__ import annotations

import torch
from torch import nn

from detrdistill.config import BaselineKDConfig
from detrdistill.losses.baselines.fgd import FGDLoss
from detrdistill.losses.baselines.fgfi import FGFILoss
from detrdistill.losses.baselines.fitnet import FitNetLoss
from detrdistill.losses.baselines.mgd import MGDLoss
from detrdistill.models.record import DetrRecord

__all__ = ["FGDLoss", "FGFILoss", "FitNetLoss", "MGDLoss", "baseline_terms", "build_baseline"]


def build_baseline(
    config: BaselineKDConfig, student_dim: int, teacher_dim: int, num_student_levels: int
) -> nn.Module | None:
    """The loss module of ``config.method`` (None for "none").

    Args:
        config: the ``distill.baseline`` section.
        student_dim, teacher_dim: channel widths of the distilled maps (the models' d_model).
        num_student_levels: number of student feature levels (one set of layers each).
    """
    config.check_method()
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


def baseline_terms(loss: nn.Module, config: BaselineKDConfig, student: DetrRecord, teacher: DetrRecord,
                   targets: list[dict]) -> dict[str, torch.Tensor]:
    """The baseline's weighted loss terms between two records' maps of ``config.features``,
    by name (``kd_<method>``; FGD by part, ``kd_fgd_<part>``, so its parts reach the logs)."""
    use_input = config.features == "encoder_input"
    maps = (student.encoder_inputs if use_input else student.features,
            teacher.encoder_inputs if use_input else teacher.features, student.feature_masks, targets)
    weight = config.resolved_weight()
    if isinstance(loss, FGDLoss):
        return {f"kd_fgd_{name}": weight * value for name, value in loss.parts(*maps).items()}
    return {f"kd_{config.method}": weight * loss(*maps)}
