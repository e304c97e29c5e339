"""Where an AdaMixer looks: its queries' 3D sampling points (the paper's Fig. 2 (c)).

The paper motivates target-aware feature distillation with AdaMixer's "active region": the
places its object queries read features from are spread over and around the objects,
unlike the GT box a CNN-era imitation mask would use. Here that region is the last stage's
sampling points of the queries Hungarian-matched to the ground truth, read by hooks on the
model's own modules during an ordinary forward pass (no second implementation of the
sampling), and the soft level each point reads (its z) against the size of its query's box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detrdistill.analysis.draw import CLASS_COLORS, batch_image, draw_boxes, new_figure, show_image, to_pixels_xyxy
from detrdistill.config import LossConfig
from detrdistill.matching import HungarianMatcher
from detrdistill.models.adamixer.modeling import AdaMixerForObjectDetection
from detrdistill.models.adamixer.sampling import level_weights, make_sample_points


@dataclass
class StagePoints:
    """One decoder stage's sampling points for a batch.

    points: [B, Q, G * P, 3] x, y in canvas pixels, z = log2 of the stride read;
    level_weights: [B, Q, G * P, L] the soft level selection of each point (sums to 1);
    boxes_cxcywh: [B, Q, 4] the stage's output boxes (normalised to the canvas);
    logits: [B, Q, C] the stage's class logits (sigmoid head).
    """

    points: torch.Tensor
    level_weights: torch.Tensor
    boxes_cxcywh: torch.Tensor
    logits: torch.Tensor
    strides: list[int]

    @property
    def scores(self) -> torch.Tensor:
        """[B, Q] each query's best class probability."""
        return self.logits.sigmoid().amax(-1)


def stage_points(model: AdaMixerForObjectDetection, batch: dict, stage: int = -1) -> StagePoints:
    """Run ``model`` on a collated batch and return decoder stage ``stage``'s sampling points."""
    if not isinstance(model, AdaMixerForObjectDetection):
        raise TypeError(f"stage_points needs an AdaMixerForObjectDetection, got {type(model).__name__}")
    block = model.stages[stage]
    seen: dict[str, torch.Tensor] = {}

    def keep_boxes(_module, args):
        seen["xyzr"] = args[1].detach()  # AdaMixerStage.forward(content, xyzr, maps, ...)

    def keep_offsets(_module, _args, output):
        seen["offsets"] = output.detach()

    hooks = [block.register_forward_pre_hook(keep_boxes), block.sampling_offsets.register_forward_hook(keep_offsets)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            features = model.encode(batch["pixel_values"], batch["pixel_mask"])
            decoded = model.decode(model.learned_queries(), features)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    config = model.config
    points = make_sample_points(seen["offsets"], seen["xyzr"], config.n_groups, config.n_points).flatten(2, 3)
    return StagePoints(
        points=points,
        level_weights=level_weights(points[..., 2], model.strides, config.level_tau),
        boxes_cxcywh=decoded.boxes_cxcywh[stage],
        logits=decoded.logits[stage],
        strides=list(model.strides),
    )


def matched_queries(sampled: StagePoints, targets: list[dict],
                    loss: LossConfig | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image (query indices, target indices): the stage's Hungarian matching to the GT."""
    loss = loss or LossConfig()
    matcher = HungarianMatcher.from_config(loss, "sigmoid")
    return matcher(sampled.logits, sampled.boxes_cxcywh, targets)


def share_inside_box(points_xy: np.ndarray, box_xyxy: np.ndarray) -> float:
    """Fraction of points [n, 2] inside the pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box_xyxy
    inside = (points_xy[:, 0] >= x0) & (points_xy[:, 0] <= x1) & (points_xy[:, 1] >= y0) & (points_xy[:, 1] <= y1)
    return float(inside.mean()) if len(points_xy) else float("nan")


def inside_shares(sampled: StagePoints, batch: dict, matches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Per matched query (image by image), the fraction of its points inside its object's GT box."""
    shares = []
    for image, (queries, objects) in enumerate(matches):
        gt = to_pixels_xyxy(batch["labels"][image]["boxes"], batch["padded_size"])
        shares += [share_inside_box(sampled.points[image, query, :, :2].numpy(), gt[target])
                   for query, target in zip(queries.tolist(), objects.tolist(), strict=True)]
    return shares


def plot_active_regions(sampled: StagePoints, batch: dict, matches: list[tuple[torch.Tensor, torch.Tensor]],
                        names: dict | None = None):
    """Fig. 2 analog, one column per image: (a) the GT boxes, (b) the sampling points of the
    queries matched to them (in the colour of the object's class, the query's predicted box dashed)."""
    count = len(batch["labels"])
    figure, axes = new_figure(2, count)
    for image in range(count):
        picture = batch_image(batch, image)
        gt = to_pixels_xyxy(batch["labels"][image]["boxes"], batch["padded_size"])
        show_image(axes[0, image], picture, "(a) ground truth")
        draw_boxes(axes[0, image], gt, batch["labels"][image]["class_labels"].numpy(), names)
        show_image(axes[1, image], picture, "(b) AdaMixer sampling points")
        queries, objects = matches[image]
        classes = batch["labels"][image]["class_labels"].tolist()
        for query, target in zip(queries.tolist(), objects.tolist(), strict=True):
            color = CLASS_COLORS[classes[target] % len(CLASS_COLORS)]  # as the object's box in (a)
            xy = sampled.points[image, query, :, :2].numpy()
            axes[1, image].scatter(xy[:, 0], xy[:, 1], s=4, color=color, alpha=0.8, linewidths=0)
            box = to_pixels_xyxy(sampled.boxes_cxcywh[image, query], batch["padded_size"])
            draw_boxes(axes[1, image], box, color=color, linestyle="--", linewidth=1.0)
        height, width = picture.shape[:2]
        for ax in axes[:, image]:
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
    return figure


def level_by_box_size(sampled: StagePoints, min_score: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """For confident queries (score >= ``min_score``): (box side sqrt(w h) normalised to the
    canvas [n], stride read [n]: 2 to the mean over its points of the level-weighted log2 stride)."""
    keep = sampled.scores >= min_score
    side = sampled.boxes_cxcywh[..., 2:].clamp(min=1e-6).prod(-1).sqrt()  # normalised sqrt(w h)
    log2_strides = torch.log2(torch.tensor(sampled.strides, dtype=torch.float32))
    read = (sampled.level_weights * log2_strides).sum(-1).mean(-1)  # [B, Q] log2 stride
    return side[keep].numpy(), (2.0 ** read[keep]).numpy()


def plot_level_by_box_size(sampled: StagePoints, canvas_side: int, min_score: float = 0.3):
    """Scatter of the stride each confident query reads against its box size: z selects coarser
    maps for bigger boxes when the soft level selection works as AdaMixer intends."""
    side, stride = level_by_box_size(sampled, min_score)
    figure, axes = new_figure(1, 1, panel_inches=3.2)
    ax = axes[0, 0]
    if len(side) == 0:  # an untrained model: nothing to place on the log axes
        ax.text(0.5, 0.5, f"no query scores >= {min_score}", ha="center", va="center", fontsize=8)
        return figure
    ax.scatter(side * canvas_side, stride, s=6, alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("box side sqrt(w h), pixels", fontsize=8)
    ax.set_ylabel("stride read (level-weighted)", fontsize=8)
    ax.set_xticks([8, 16, 32, 64, 128])
    ax.set_xticklabels(["8", "16", "32", "64", "128"])
    ax.set_yticks(sampled.strides)
    ax.set_yticklabels([str(s) for s in sampled.strides])
    ax.set_title(f"AdaMixer: level read vs box size ({len(side)} queries)", fontsize=8)
    return figure
