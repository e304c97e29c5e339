"""Feature distillation step by step for one teacher query (notebook 03's walk-through, 4.2).

For one image and one teacher query: its mask psi_i under each form of
``distill.features.mask``, the two factors of its quality score q_i = c_i^gamma IoU_i^(1-gamma)
(eq. 7), its own share of the loss weight, and the whole per-pixel weight every form puts on
the squared feature error. The masks are the loss's own (``FeatureDistillation.masks_per_query``
and ``weight_maps``, via ``masks.compute_masks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detrdistill.analysis.masks import ImageMasks, compute_masks, valid_crop
from detrdistill.config import FD_MASKS, FeatureDistillConfig, LossConfig
from detrdistill.losses.features import FeatureDistillation
from detrdistill.models.adapters import adapter_for


@dataclass
class FdStep:
    """One teacher query of one image under every FD mask form. L = feature levels.

    Attributes:
        query: the teacher query; matched_gt: the GT box its own match gives it (-1: none).
        score: c_i, its top class probability; iou: IoU_i with that GT box (0 when unmatched);
        gamma: eq. 7's exponent; score_factor = c_i^gamma, iou_factor = IoU_i^(1 - gamma),
        quality = their product q_i.
        masks: form -> per level [H_l, W_l], psi_i of this query (``vanilla``: the mean over
            queries, the same for all; ``release``: cos(F, Q_i) before its weighted sum).
        own_weight: ``quality`` and ``paper`` -> per level [H_l, W_l], this query's own part of the
            loss weight, q_i psi_i^2 / M.
        image_masks: the image's masks and predictions (``compute_masks``); its ``loss_weights``
            are the whole weights, over all queries.
    """

    query: int
    matched_gt: int
    score: float
    iou: float
    gamma: float
    score_factor: float
    iou_factor: float
    quality: float
    masks: dict[str, list[np.ndarray]]
    own_weight: dict[str, list[np.ndarray]]
    image_masks: ImageMasks


@torch.no_grad()
def fd_step(teacher, batch: dict, image: int = 0, query: int | None = None, loss: LossConfig | None = None,
            features: FeatureDistillConfig | None = None, device: str | torch.device = "cpu") -> FdStep:
    """FD for ``query`` of image ``image`` of a collated batch (None: the query of highest
    quality). ``loss`` and ``features`` as for ``compute_masks`` (the distilled run's
    ``config.loss`` and ``config.distill.features``)."""
    features = features or FeatureDistillConfig()
    sample = compute_masks(teacher, batch, loss, features, device)[image]
    query = int(np.argmax(sample.quality)) if query is None else int(query)
    if not 0 <= query < len(sample.quality):
        raise IndexError(f"query {query}: the teacher has {len(sample.quality)} queries")
    adapter = adapter_for(teacher)
    was_training = teacher.training
    teacher.eval().to(device)
    record = adapter(batch["pixel_values"].to(device), batch["pixel_mask"].to(device))
    teacher.train(was_training)
    maps = record.encoder_inputs if features.features == "encoder_input" else record.features
    one = slice(image, image + 1)  # the image's own outputs: the forward pass treats images apart
    queries = record.decoder_hidden[-1, one].float().cpu()
    num_queries = queries.shape[1]
    masks: dict[str, list[np.ndarray]] = {}
    own_weight: dict[str, list[np.ndarray]] = {}
    for form in FD_MASKS:
        config = FeatureDistillConfig(mask=form, gamma=features.gamma, temperature=features.temperature)
        loss_module = FeatureDistillation(config, queries.shape[-1], queries.shape[-1], 1)
        masks[form], own_weight_levels = [], []
        for level_map, valid in zip(maps, record.feature_masks, strict=True):
            height, width = valid_crop(valid[image].cpu())
            per_query = loss_module.masks_per_query(level_map[one].float().cpu(), valid[one].cpu(), queries)[0]
            mask = per_query.mean(0) if form == "vanilla" else per_query[query]
            masks[form].append(mask[:height, :width].numpy())
            own = float(sample.quality[query]) * per_query[query] ** 2 / num_queries
            own_weight_levels.append(own[:height, :width].numpy())
        if form in ("quality", "paper"):
            own_weight[form] = own_weight_levels
    score, iou, gamma = float(sample.scores[query]), float(sample.iou[query]), features.gamma
    return FdStep(
        query=query, matched_gt=int(sample.matched_gt[query]), score=score, iou=iou, gamma=gamma,
        score_factor=score**gamma, iou_factor=iou ** (1 - gamma), quality=float(sample.quality[query]),
        masks=masks, own_weight=own_weight, image_masks=sample,
    )
