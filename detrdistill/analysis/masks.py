"""The soft masks of target-aware feature distillation, as arrays and as pictures (Fig. 4, Fig. 6).

For a teacher, per feature level l and query i (its last decoder stage's output embedding,
the queries FD uses):

    psi_i        per-query mask (Fig. 4): ``losses.features.query_masks``, a spatial softmax
                 of F^T . Q_i, mean 1 over the image
    vanilla      mean_i psi_i (eq. 6, every query equal; Table 2's weak baseline)
    weighted     sum_i q_i psi_i (Fig. 6), q_i = c_i^0.5 IoU_i^0.5 the quality score (eq. 7)
    loss_weights the per-pixel weight each FD mask form puts on the squared feature error,
                 from the loss's own ``FeatureDistillation.weight_maps``: mean_i q_i psi_i^2
                 for ``quality`` and ``paper`` (psi the raw dot product there), (mean_i psi_i)^2
                 for ``vanilla``, the cosine release mask squared for ``release``

The maths is the loss's own (``losses/features.py``); this module only collects it per
image. Fig. 6 shows sum_i q_i psi_i; what training weights is ``loss_weights``, drawn by
``plot_loss_weights``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from detrdistill.analysis.draw import batch_image, draw_boxes, new_figure, show_image, to_pixels_xyxy
from detrdistill.config import FD_MASKS, FeatureDistillConfig, LossConfig
from detrdistill.losses.features import FeatureDistillation, class_scores, matched_iou, quality_scores, query_masks
from detrdistill.matching import HungarianMatcher
from detrdistill.models.adapters import adapter_for


def level_masks(
    features: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor, quality: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three masks of one feature level.

    Args:
        features: [B, D, H, W] teacher features; valid: [B, H, W] bool (False = padding);
        queries: [B, M, D] teacher query embeddings; quality: [B, M] quality scores.

    Returns:
        per_query [B, M, H, W] (each mean 1 over the valid pixels), vanilla [B, H, W]
        (mean 1), weighted [B, H, W] (mean sum_i q_i); all 0 on padding.
    """
    per_query = query_masks(features, valid, queries)
    return per_query, per_query.mean(1), (quality[:, :, None, None] * per_query).sum(1)


@dataclass
class ImageMasks:
    """Masks and the teacher's predictions for one image. M = queries, L = feature levels.

    Attributes:
        image: [h, w, 3] in [0, 1], the image as the model saw it (padding cut off).
        gt_boxes_xyxy: [n, 4] pixels; gt_labels: [n].
        boxes_xyxy: [M, 4] pixels, the teacher's last-stage boxes; labels, scores: [M] top class.
        iou: [M] IoU with the GT box the teacher's own match gives the query (0 if unmatched).
        quality: [M] q = c^gamma IoU^(1 - gamma); matched_gt: [M] GT index or -1.
        query_masks: per level [M, H_l, W_l]; vanilla, weighted: per level [H_l, W_l]
            (valid region only: the level's padding is cut off like the image's).
    """

    image: np.ndarray
    gt_boxes_xyxy: np.ndarray
    gt_labels: np.ndarray
    boxes_xyxy: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    iou: np.ndarray
    quality: np.ndarray
    matched_gt: np.ndarray
    query_masks: list[np.ndarray]
    vanilla: list[np.ndarray]
    weighted: list[np.ndarray]
    loss_weights: dict[str, list[np.ndarray]]  # FD mask form -> per level [H_l, W_l]

    @property
    def num_levels(self) -> int:
        return len(self.vanilla)

    def stride(self, level: int) -> int:
        """Pixels per mask cell at ``level`` (8, 16, 32, ...)."""
        return round(self.image.shape[0] / self.vanilla[level].shape[0])


@torch.no_grad()
def compute_masks(
    model,
    batch: dict,
    loss: LossConfig | None = None,
    features: FeatureDistillConfig | None = None,
    device: str | torch.device = "cpu",
) -> list[ImageMasks]:
    """Teacher masks for every image of a collated batch (``draw.load_batch``).

    ``loss`` gives the matching costs (the run's ``config.loss``); ``features`` the feature
    source (encoder output or input) and gamma, as FD would use them.
    """
    loss, features = loss or LossConfig(), features or FeatureDistillConfig()
    adapter = adapter_for(model)
    was_training = model.training
    model.eval().to(device)
    record = adapter(batch["pixel_values"].to(device), batch["pixel_mask"].to(device))
    model.train(was_training)
    targets = batch["labels"]
    logits, boxes = record.logits[-1].float().cpu(), record.boxes_cxcywh[-1].float().cpu()
    matcher = HungarianMatcher.from_config(loss, adapter.class_head)
    matches = matcher(logits, boxes, targets)
    scores = class_scores(logits, adapter.class_head)
    iou = matched_iou(boxes, targets, matches)
    quality = quality_scores(scores, iou, features.gamma)
    maps = record.encoder_inputs if features.features == "encoder_input" else record.features
    queries = record.decoder_hidden[-1].float().cpu()
    levels = [level_masks(m.float().cpu(), v.cpu(), queries, quality) for m, v in zip(maps, record.feature_masks,
                                                                                        strict=True)]
    loss_weights = {form: _loss_weights(form, features, maps, record.feature_masks, queries, scores, boxes, targets,
                                        matches) for form in FD_MASKS}
    labels = logits[..., : adapter.num_classes].argmax(-1)
    result = []
    for image in range(len(targets)):
        matched = torch.full((logits.shape[1],), -1, dtype=torch.int64)
        matched[matches[image][0]] = matches[image][1]
        crops = [valid_crop(valid[image]) for valid in record.feature_masks]
        result.append(ImageMasks(
            image=batch_image(batch, image),
            gt_boxes_xyxy=to_pixels_xyxy(targets[image]["boxes"], batch["padded_size"]),
            gt_labels=targets[image]["class_labels"].numpy(),
            boxes_xyxy=to_pixels_xyxy(boxes[image], batch["padded_size"]),
            labels=labels[image].numpy(),
            scores=scores[image].numpy(),
            iou=iou[image].numpy(),
            quality=quality[image].numpy(),
            matched_gt=matched.numpy(),
            query_masks=[q[image, :, :h, :w].numpy() for (q, _, _), (h, w) in zip(levels, crops, strict=True)],
            vanilla=[v[image, :h, :w].numpy() for (_, v, _), (h, w) in zip(levels, crops, strict=True)],
            weighted=[m[image, :h, :w].numpy() for (_, _, m), (h, w) in zip(levels, crops, strict=True)],
            loss_weights={form: [m[image, :h, :w].numpy() for m, (h, w) in zip(per_level, crops, strict=True)]
                          for form, per_level in loss_weights.items()},
        ))
    return result


def _loss_weights(form: str, features: FeatureDistillConfig, maps: list[torch.Tensor], valid: list[torch.Tensor],
                  queries: torch.Tensor, scores: torch.Tensor, boxes: torch.Tensor, targets: list[dict],
                  matches) -> list[torch.Tensor]:
    """Per level [B, H_l, W_l]: the weight mask form ``form`` puts on each pixel's squared
    error, with ``features``' gamma and temperature, computed by the loss itself."""
    config = FeatureDistillConfig(mask=form, gamma=features.gamma, temperature=features.temperature)
    loss = FeatureDistillation(config, queries.shape[-1], queries.shape[-1], 1)
    weights = loss.query_weights(scores, boxes, targets, matches)
    return [loss.weight_maps(m.float().cpu(), v.cpu(), queries, weights) for m, v in zip(maps, valid, strict=True)]


def share_in_boxes(mask: np.ndarray, boxes_xyxy: np.ndarray, image_size: tuple[int, int]) -> float:
    """Fraction of a mask's mass (upsampled to the image) that falls inside any of the boxes
    (pixel xyxy [n, 4]): how much of the distillation weight sits on objects."""
    heat = upsample(mask, image_size)
    inside = np.zeros(image_size, dtype=bool)
    rows, cols = np.arange(image_size[0])[:, None] + 0.5, np.arange(image_size[1])[None, :] + 0.5
    for x0, y0, x1, y1 in np.asarray(boxes_xyxy).reshape(-1, 4):
        inside |= (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)
    return float(heat[inside].sum() / max(heat.sum(), 1e-12))


def mask_shares(samples: list[ImageMasks]) -> dict[str, list[float]]:
    """Mean ``share_in_boxes`` over images, per level, of the vanilla and the quality-weighted
    mask (Fig. 6's quantities) and of each FD form's loss weight: {"vanilla": [L],
    "quality-weighted": [L], "loss weight, <form>": [L] ...} (images without GT boxes left out)."""
    with_gt = [s for s in samples if len(s.gt_boxes_xyxy)]
    if not with_gt:
        raise ValueError("no image with ground-truth boxes: nothing to measure the mask share on")
    kinds = {"vanilla": lambda s: s.vanilla, "quality-weighted": lambda s: s.weighted}
    kinds |= {f"loss weight, {form}": (lambda s, form=form: s.loss_weights[form]) for form in FD_MASKS}
    return {
        kind: [float(np.mean([share_in_boxes(maps(s)[level], s.gt_boxes_xyxy, s.image.shape[:2]) for s in with_gt]))
               for level in range(with_gt[0].num_levels)]
        for kind, maps in kinds.items()
    }


def quality_table(sample: ImageMasks, names: dict | None = None, top: int = 8) -> str:
    """Markdown table of the ``top`` queries by quality: class, score c, IoU, q, matched GT."""
    lines = ["| query | class | c | IoU | q | GT |", "|---:|---|---:|---:|---:|---:|"]
    for query in np.argsort(-sample.quality, kind="stable")[:top]:
        label = int(sample.labels[query])
        name = names.get(label, str(label)) if names else str(label)
        gt = int(sample.matched_gt[query])
        lines.append(f"| {query} | {name} | {sample.scores[query]:.2f} | {sample.iou[query]:.2f} | "
                     f"{sample.quality[query]:.2f} | {gt if gt >= 0 else '-'} |")
    return "\n".join(lines)


def valid_crop(valid: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) of a level's real region: padding is at the bottom and right."""
    return int(valid.any(1).sum()), int(valid.any(0).sum())


def upsample(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A level's mask [H_l, W_l] resized to the image's (h, w), bilinear."""
    tensor = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay_mask(ax, image: np.ndarray, mask: np.ndarray, title: str | None = None, alpha: float = 0.55,
                 cmap: str = "jet") -> None:
    """The image with ``mask`` (any level, any scale) over it, scaled to its own maximum."""
    show_image(ax, image, title)
    heat = upsample(mask, image.shape[:2])
    ax.imshow(heat / max(float(heat.max()), 1e-12), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0,
              extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))


def select_queries(masks: ImageMasks, num_good: int = 3, num_bad: int = 2) -> tuple[list[int], list[int]]:
    """Queries to show in Fig. 4: the best-quality query of each of up to ``num_good`` GT boxes
    (best first), and the ``num_bad`` lowest-quality queries (lowest class score first)."""
    order = np.argsort(-masks.quality, kind="stable")
    good, seen = [], set()
    for query in order:
        gt = int(masks.matched_gt[query])
        if gt >= 0 and gt not in seen:
            good.append(int(query))
            seen.add(gt)
        if len(good) == num_good:
            break
    rest = [int(q) for q in np.lexsort((masks.scores, masks.quality)) if int(q) not in good]
    return good, rest[:num_bad]


def plot_query_masks(samples: list[ImageMasks], names: dict | None = None, level: int = 0, num_good: int = 3,
                     num_bad: int = 2):
    """Fig. 4 analog: per image one row: the image with its GT boxes, the masks psi_i of the
    best-quality query of each object, then masks of low-quality queries (with their boxes)."""
    figure, axes = new_figure(len(samples), 1 + num_good + num_bad)
    for row, sample in enumerate(samples):
        show_image(axes[row, 0], sample.image, "image + GT" if row == 0 else None)
        draw_boxes(axes[row, 0], sample.gt_boxes_xyxy, sample.gt_labels, names)
        good, bad = select_queries(sample, num_good, num_bad)
        for col, query in enumerate(good + bad, start=1):
            kind = "high q" if query in good else "low q"
            title = f"{kind} #{query}: q={sample.quality[query]:.2f}\nc={sample.scores[query]:.2f} " \
                    f"IoU={sample.iou[query]:.2f}"
            overlay_mask(axes[row, col], sample.image, sample.query_masks[level][query], title)
            draw_boxes(axes[row, col], sample.boxes_xyxy[query], color="white", linestyle="--")
        for col in range(1 + len(good) + len(bad), axes.shape[1]):
            axes[row, col].axis("off")
    figure.suptitle(f"Per-query masks psi_i (stride {samples[0].stride(level)}); dashed: the query's box", fontsize=9)
    return figure


def plot_level_masks(samples: list[ImageMasks], names: dict | None = None):
    """Fig. 6 analog: per image two rows over the feature levels: the vanilla mask (eq. 6,
    mean of all psi_i) and the quality-weighted mask sum_i q_i psi_i."""
    levels = samples[0].num_levels
    figure, axes = new_figure(2 * len(samples), 1 + levels)
    for index, sample in enumerate(samples):
        for row, (kind, maps) in enumerate((("vanilla", sample.vanilla), ("quality-weighted", sample.weighted))):
            ax_row = axes[2 * index + row]
            show_image(ax_row[0], sample.image, "image + GT" if row == 0 else None)
            draw_boxes(ax_row[0], sample.gt_boxes_xyxy, sample.gt_labels, names)
            ax_row[0].set_ylabel(kind, fontsize=8)
            for level in range(levels):
                overlay_mask(ax_row[1 + level], sample.image, maps[level], f"{kind}, stride {sample.stride(level)}")
    figure.suptitle("FD selection masks per feature level: mean_i psi_i (eq. 6) vs sum_i q_i psi_i (Fig. 6)",
                    fontsize=9)
    return figure


def plot_loss_weights(sample: ImageMasks, names: dict | None = None):
    """What FD weights, per mask form (rows) and feature level (columns), for one image: the
    loss's own per-pixel weight (``loss_weights``), each panel scaled to its own maximum and
    titled with its mean weight (the loss's scale) and the share of it inside GT boxes."""
    levels = sample.num_levels
    figure, axes = new_figure(len(FD_MASKS), 1 + levels)
    for row, form in enumerate(FD_MASKS):
        show_image(axes[row, 0], sample.image, "image + GT" if row == 0 else None)
        draw_boxes(axes[row, 0], sample.gt_boxes_xyxy, sample.gt_labels, names)
        axes[row, 0].set_ylabel(form, fontsize=8)
        for level in range(levels):
            weight = sample.loss_weights[form][level]
            share = share_in_boxes(weight, sample.gt_boxes_xyxy, sample.image.shape[:2])
            overlay_mask(axes[row, 1 + level], sample.image, weight,
                         f"{form}, stride {sample.stride(level)}\nmean {weight.mean():.3g}, {100 * share:.0f}% in GT")
    figure.suptitle("FD's per-pixel loss weight by mask form (distill.features.mask)", fontsize=9)
    return figure
