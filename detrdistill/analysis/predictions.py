"""Detections of one or more models on a few images, as arrays and as a picture grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detrdistill.analysis.draw import batch_image, draw_boxes, new_figure, show_image, to_pixels_xyxy
from detrdistill.models.adapters import adapter_for

SCORE_THRESHOLD = 0.3


@dataclass
class Detections:
    """One image's detections above a score threshold, best first.

    Attributes:
        boxes_xyxy: [n, 4] pixels; labels: [n] class indices; scores: [n]; queries: [n] query index.
    """

    boxes_xyxy: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    queries: np.ndarray


@torch.no_grad()
def detect(model, batch: dict, threshold: float = SCORE_THRESHOLD, device: str | torch.device = "cpu"
           ) -> list[Detections]:
    """Each query's best class and score on a collated batch; keeps queries scoring >= threshold."""
    adapter = adapter_for(model)
    was_training = model.training
    model.eval().to(device)
    output = model(pixel_values=batch["pixel_values"].to(device), pixel_mask=batch["pixel_mask"].to(device))
    model.train(was_training)
    logits = output.logits.float().cpu()
    if adapter.class_head == "softmax":
        probabilities = logits.softmax(-1)[..., :-1]  # drop the no-object column
    else:
        probabilities = logits.sigmoid()
    scores, labels = probabilities.max(-1)
    result = []
    for image in range(len(batch["meta"])):
        keep = torch.nonzero(scores[image] >= threshold)[:, 0]
        keep = keep[scores[image, keep].argsort(descending=True)]
        result.append(Detections(
            boxes_xyxy=to_pixels_xyxy(output.pred_boxes[image, keep].cpu(), batch["padded_size"]),
            labels=labels[image, keep].numpy(), scores=scores[image, keep].numpy(), queries=keep.numpy(),
        ))
    return result


def plot_detections(batch: dict, detections: dict[str, list[Detections]], names: dict | None = None):
    """One row per model (dict key), one column per image: detections in class colours,
    ground truth dashed white."""
    figure, axes = new_figure(len(detections), len(batch["meta"]))
    for row, (model_name, per_image) in enumerate(detections.items()):
        for col, found in enumerate(per_image):
            ax = axes[row, col]
            show_image(ax, batch_image(batch, col))
            draw_boxes(ax, to_pixels_xyxy(batch["labels"][col]["boxes"], batch["padded_size"]), color="white",
                       linestyle="--", linewidth=1.0)
            draw_boxes(ax, found.boxes_xyxy, found.labels, names, found.scores)
            if col == 0:
                ax.set_ylabel(model_name, fontsize=8)
    figure.suptitle(f"Detections with score >= {SCORE_THRESHOLD} (dashed: ground truth)", fontsize=9)
    return figure
