"""AdamW with DETR's lower backbone learning rate, and the warm-up + step-decay schedule."""

from __future__ import annotations

import torch
from torch import nn

from detrdistill.config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig, extra_modules: list[nn.Module] = ()) -> torch.optim.AdamW:
    """Two parameter groups: the backbone at ``lr_backbone``, everything else at ``lr``.

    ``extra_modules`` (e.g. a distiller's projections) join the main group.
    """
    backbone, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if ".backbone." in f".{name}" else rest).append(parameter)
    for module in extra_modules:
        rest.extend(p for p in module.parameters() if p.requires_grad)
    groups = [
        {"params": rest, "lr": train.lr, "base_lr": train.lr},
        {"params": backbone, "lr": train.lr_backbone, "base_lr": train.lr_backbone},
    ]
    # The fused kernel: one pass over all parameters instead of a loop of small ops; on this
    # CPU it made the Conditional DETR teacher's optimiser step 22 -> 5 ms (of ~190 ms a step).
    return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay, fused=True)


def lr_factor(step: int, progress: float, train: TrainConfig) -> float:
    """Multiplier on each group's base LR.

    Linear warm-up over ``warmup_steps``, then constant until ``lr_drop_at`` of the budget
    (steps or minutes, whichever is further along: ``progress`` in [0, 1]) and
    ``lr_drop_factor`` after.
    """
    warmup = min(1.0, (step + 1) / train.warmup_steps) if train.warmup_steps > 0 else 1.0
    decay = train.lr_drop_factor if progress >= train.lr_drop_at else 1.0
    return warmup * decay


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
