"""A dataset at a glance: sample images with their boxes, and counts of objects, classes, sizes."""

from __future__ import annotations

from collections import Counter

import numpy as np
from matplotlib.figure import Figure

from detrdistill.analysis.draw import batch_image, draw_boxes, load_batch, new_figure, show_image, to_pixels_xyxy


def plot_samples(dataset, indices: list[int], cols: int = 4):
    """Images ``indices`` of ``dataset`` (as the model sees them) with their GT boxes and class names."""
    batch = load_batch(dataset, indices)
    rows = -(-len(indices) // cols)
    figure, axes = new_figure(rows, cols)
    for i, ax in enumerate(axes.flat):
        if i >= len(indices):
            ax.axis("off")
            continue
        target = batch["labels"][i]
        show_image(ax, batch_image(batch, i), f"image id {batch['meta'][i]['image_id']}")
        draw_boxes(ax, to_pixels_xyxy(target["boxes"], batch["padded_size"]), target["class_labels"],
                   dataset.id2label)
    return figure


def dataset_summary(dataset) -> dict:
    """Counts from the annotation file: images, objects, objects per image, per class, box sides.

    Returns {"images", "objects", "per_image": {count: images}, "per_class": {name: objects},
    "sides_px": [sqrt(w h) of every box]} (crowd boxes left out).
    """
    annotations = [a for a in dataset.coco_json["annotations"] if not a.get("iscrowd", 0)]
    names = {c["id"]: c["name"] for c in dataset.coco_json["categories"]}
    per_image = Counter(a["image_id"] for a in annotations)
    image_ids = [dataset.image_info(i)["id"] for i in range(len(dataset))]
    return {
        "images": len(image_ids),
        "objects": len(annotations),
        "per_image": dict(sorted(Counter(per_image.get(i, 0) for i in image_ids).items())),
        "per_class": dict(Counter(names[a["category_id"]] for a in annotations)),
        "sides_px": [float(np.sqrt(a["bbox"][2] * a["bbox"][3])) for a in annotations],
    }


def plot_summary(summary: dict) -> Figure:
    """Three panels of ``dataset_summary``: objects per image, objects per class, box sizes."""
    figure = Figure(figsize=(10, 2.8), layout="constrained")
    per_image, per_class, sides = figure.subplots(1, 3)
    per_image.bar(list(summary["per_image"]), list(summary["per_image"].values()), color="tab:blue")
    per_image.set(xlabel="objects in the image", ylabel="images")
    per_class.bar(list(summary["per_class"]), list(summary["per_class"].values()), color="tab:orange")
    per_class.set(ylabel="objects")
    per_class.tick_params(axis="x", labelrotation=45)
    sides.hist(summary["sides_px"], bins=30, color="tab:green")
    sides.set(xlabel="box side sqrt(w h), px", ylabel="objects")
    figure.suptitle(f"{summary['images']} images, {summary['objects']} objects", fontsize=9)
    return figure
