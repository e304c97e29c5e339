"""Shared plotting pieces: figures without pyplot, images as the model saw them, boxes.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot, no global state): they
save headless with ``fig.savefig`` and display inline in notebooks.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from detrdistill.data.collate import collate_detection
from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# One colour per class index (matplotlib's tab10), cycling beyond ten classes.
CLASS_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                "tab:gray", "tab:olive", "tab:cyan"]
PANEL_INCHES = 2.2


def new_figure(rows: int, cols: int, panel_inches: float = PANEL_INCHES) -> tuple[Figure, np.ndarray]:
    """A Figure with a rows x cols grid of square panels -> (figure, axes [rows, cols])."""
    figure = Figure(figsize=(cols * panel_inches, rows * panel_inches + 0.3), layout="constrained")
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return figure, axes


def load_batch(dataset, indices: list[int], size_divisor: int = 1) -> dict:
    """A collated batch (see ``collate_detection``) of the dataset items at ``indices``, its
    canvas padded to a multiple of ``size_divisor`` (a model's ``adapter.size_divisor``: 32 for
    RT-DETR and D-FINE)."""
    return collate_detection([dataset[i] for i in indices], size_divisor)


def one_image(batch: dict, index: int) -> dict:
    """Image ``index`` of a collated batch as a batch of its own (same padded canvas, so its
    boxes keep their normalised coordinates)."""
    one = slice(index, index + 1)
    return {**batch, "pixel_values": batch["pixel_values"][one], "pixel_mask": batch["pixel_mask"][one],
            "labels": batch["labels"][one], "meta": batch["meta"][one]}


def batch_image(batch: dict, index: int) -> np.ndarray:
    """Image ``index`` of a batch as the model saw it (resized, padding cut off): [h, w, 3] in [0, 1]."""
    height, width = batch["meta"][index]["size"]
    pixels = batch["pixel_values"][index, :, :height, :width].permute(1, 2, 0).float().cpu().numpy()
    return np.clip(pixels * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN), 0.0, 1.0)


def to_pixels_xyxy(boxes_cxcywh: torch.Tensor, padded_size: tuple[int, int]) -> np.ndarray:
    """Normalised cxcywh boxes [..., 4] (relative to the padded canvas (H, W)) -> pixel xyxy."""
    height, width = padded_size
    cx, cy, w, h = boxes_cxcywh.float().cpu().unbind(-1)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return (torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * scale).numpy()


def draw_boxes(ax, boxes_xyxy: np.ndarray, labels=None, names: dict | None = None, scores=None,
               color: str | None = None, linestyle: str = "-", linewidth: float = 1.5) -> None:
    """Draw pixel xyxy boxes [n, 4] on ``ax``; colour by class unless ``color`` is given; a
    caption with the class name and score when ``names`` / ``scores`` are given."""
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes_xyxy, dtype=float).reshape(-1, 4)):
        label = None if labels is None else int(labels[i])
        edge = color or (CLASS_COLORS[label % len(CLASS_COLORS)] if label is not None else "white")
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=edge, linewidth=linewidth,
                               linestyle=linestyle))
        caption = [names.get(label, str(label))] if names is not None and label is not None else []
        if scores is not None:
            caption.append(f"{float(scores[i]):.2f}")
        if caption:
            ax.text(x0, y0, " ".join(caption), fontsize=6, color="white", va="bottom",
                    bbox=dict(facecolor=edge, alpha=0.7, pad=0.5, linewidth=0))


def show_image(ax, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(image, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)


def pick_images(dataset, count: int, min_objects: int = 2, max_objects: int = 3, min_side: float = 16.0) -> list[int]:
    """Indices of the first ``count`` images with ``min_objects``..``max_objects`` objects whose
    smaller side is at least ``min_side`` px (readable masks); fills up with the first others."""
    sides = Counter()
    total = Counter()
    for annotation in dataset.coco_json["annotations"]:
        if annotation.get("iscrowd", 0):
            continue
        total[annotation["image_id"]] += 1
        if min(annotation["bbox"][2:]) >= min_side:
            sides[annotation["image_id"]] += 1
    ids = [dataset.image_info(i)["id"] for i in range(len(dataset))]
    chosen = [i for i, image_id in enumerate(ids)
              if min_objects <= total[image_id] <= max_objects and sides[image_id] == total[image_id]][:count]
    chosen += [i for i in range(len(dataset)) if i not in chosen][: count - len(chosen)]
    return chosen
