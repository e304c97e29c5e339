"""How target-aware is FD? The share of the loss's pixel weight inside GT boxes, per mask form.

Target-aware feature distillation is meant to put its weight on objects. For a teacher and
each FD setting, this measures the weight map the loss itself uses,
w = ``FeatureDistillation.weight_maps`` (mean_i q_i psi_i^2 for the quality and paper masks),
on each feature level of each image:

    weight_in_gt    sum over cells of w x the cell's share covered by GT boxes / sum of w
    gt_pixel_share  the share of the image covered by GT boxes (what a uniform mask gives)
    focus           weight_in_gt / gt_pixel_share (1: no better than uniform)
    mean_weight     mean of w over the image's cells: the scale lambda_FD multiplies
    peak            E[w^2] / E[w]^2 over the cells (1 for a uniform map)

Images without GT boxes are left out of the shares. Means are over images, then levels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from detrdistill.config import FeatureDistillConfig, LossConfig
from detrdistill.losses.features import FeatureDistillation, class_scores
from detrdistill.matching import HungarianMatcher
from detrdistill.models.adapters import adapter_for

MEASURES = ("weight_in_gt", "gt_pixel_share", "focus", "mean_weight", "peak")


def box_coverage(boxes_cxcywh: torch.Tensor, shape: tuple[int, int], subsamples: int = 8) -> torch.Tensor:
    """[H, W] in [0, 1]: the share of each cell covered by the union of the boxes (normalised
    cxcywh on the padded canvas), from ``subsamples`` x ``subsamples`` points per cell, so a box
    smaller than a cell of a coarse level still counts."""
    height, width = shape
    rows = (torch.arange(height * subsamples, dtype=torch.float32) + 0.5) / (height * subsamples)
    cols = (torch.arange(width * subsamples, dtype=torch.float32) + 0.5) / (width * subsamples)
    inside = torch.zeros(height * subsamples, width * subsamples, dtype=torch.bool)
    for cx, cy, w, h in boxes_cxcywh.float().tolist():
        inside |= ((rows[:, None] >= cy - h / 2) & (rows[:, None] <= cy + h / 2)
                   & (cols[None, :] >= cx - w / 2) & (cols[None, :] <= cx + w / 2))
    return inside.float().view(height, subsamples, width, subsamples).mean((1, 3))


def level_measures(weight: torch.Tensor, valid: torch.Tensor, boxes_cxcywh: torch.Tensor) -> dict[str, float] | None:
    """The measures of one image's weight map [H, W] (valid [H, W] bool); None without GT boxes."""
    if not len(boxes_cxcywh):
        return None
    coverage = box_coverage(boxes_cxcywh, tuple(weight.shape))[valid].double()
    cells = weight[valid].double()
    in_gt = ((cells * coverage).sum() / cells.sum().clamp(min=1e-30)).item()
    pixel_share = coverage.mean().item()
    mean = cells.mean().item()
    return {"weight_in_gt": in_gt, "gt_pixel_share": pixel_share, "focus": in_gt / max(pixel_share, 1e-12),
            "mean_weight": mean, "peak": ((cells**2).mean() / max(mean**2, 1e-30)).item()}


@torch.no_grad()
def mask_focus(
    teacher, batches: Iterable[dict], forms: Mapping[str, FeatureDistillConfig], loss: LossConfig | None = None,
) -> dict[str, dict]:
    """Each FD form's measures on a teacher, over collated batches (``draw.load_batch``).

    Returns {form: {measure: mean over images and levels, "per_level": {measure: [L]}}}.
    """
    loss = loss or LossConfig()
    adapter = adapter_for(teacher)
    matcher = HungarianMatcher.from_config(loss, adapter.class_head)
    was_training = teacher.training
    teacher.eval()
    collected: dict[str, list[list[dict]]] = {name: [] for name in forms}
    for batch in batches:
        record = adapter(batch["pixel_values"], batch["pixel_mask"])
        targets = batch["labels"]
        logits, boxes = record.logits[-1].float(), record.boxes_cxcywh[-1].float()
        matches = matcher(logits, boxes, targets)
        scores = class_scores(logits, adapter.class_head)
        queries = record.decoder_hidden[-1].float()
        for name, config in forms.items():
            fd = FeatureDistillation(config, adapter.d_model, adapter.d_model, 1)
            query_weights = fd.query_weights(scores, boxes, targets, matches)
            maps = record.encoder_inputs if config.features == "encoder_input" else record.features
            for level, (features, valid) in enumerate(zip(maps, record.feature_masks, strict=True)):
                weight = fd.weight_maps(features.float(), valid, queries, query_weights)
                while len(collected[name]) <= level:
                    collected[name].append([])
                for image, target in enumerate(targets):
                    measures = level_measures(weight[image], valid[image], target["boxes"])
                    if measures is not None:
                        collected[name][level].append(measures)
    teacher.train(was_training)
    result = {}
    for name, levels in collected.items():
        per_level = {m: [float(np.mean([image[m] for image in images])) for images in levels] for m in MEASURES}
        result[name] = {**{m: float(np.mean(values)) for m, values in per_level.items()}, "per_level": per_level}
    return result


def format_focus_table(results: Mapping[str, Mapping]) -> str:
    """Markdown: one row per form with the measures."""
    lines = ["| FD form | weight in GT boxes | GT pixel share | focus | mean weight | E[w^2]/E[w]^2 |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['weight_in_gt']:.0f} % | {100 * r['gt_pixel_share']:.0f} % | "
                     f"{r['focus']:.2f} | {r['mean_weight']:.3g} | {r['peak']:.2f} |")
    return "\n".join(lines)
