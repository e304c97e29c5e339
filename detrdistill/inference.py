"""Run a detector over a dataset split and score it with COCO AP."""

from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from detrdistill.data.coco import CocoDetection
from detrdistill.data.collate import collate_detection
from detrdistill.evaluate import evaluate_coco, predictions_to_coco
from detrdistill.models.adapters import adapter_for
from detrdistill.models.build import load_detector
from detrdistill.models.label_sets import restrict_to_dataset_classes


def load_for_dataset(model_dir, dataset: CocoDetection):
    """A saved detector whose classes are the dataset's, matched by name (not by position): a
    dataset that numbers them otherwise or holds a subset is scored correctly, and one with
    a class the model does not know is refused naming it."""
    return restrict_to_dataset_classes(load_detector(model_dir), dataset.id2label, str(model_dir))


@torch.no_grad()
def predict(
    model, dataset: CocoDetection, batch_size: int = 32, max_images: int | None = None, progress: bool = True
) -> tuple[list[dict], list[int]]:
    """COCO result dicts for the first ``max_images`` images (all when None), and their ids."""
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    indices = range(len(dataset) if max_images is None else min(max_images, len(dataset)))
    # A private generator: evaluating in the middle of training must not draw from the global
    # RNG, or how often a run evaluates would change its augmentations afterwards.
    loader = DataLoader(
        Subset(dataset, indices), batch_size=batch_size, generator=torch.Generator(),
        collate_fn=functools.partial(collate_detection, size_divisor=adapter.size_divisor),
    )
    results, image_ids = [], []
    for batch in tqdm(loader, desc="evaluating", leave=False, disable=not progress):
        output = model(pixel_values=batch["pixel_values"].to(device), pixel_mask=batch["pixel_mask"].to(device))
        results += predictions_to_coco(
            output.logits,
            output.pred_boxes,
            batch["meta"],
            batch["padded_size"],
            dataset.label_to_category_id,
            use_sigmoid=adapter.class_head == "sigmoid",
        )
        image_ids += [m["image_id"] for m in batch["meta"]]
    model.train(was_training)
    return results, image_ids


def restrict_to_images(coco_json: dict, image_ids: list[int]) -> dict:
    """The ground truth of only these images (for evaluating on part of a split)."""
    keep = set(image_ids)
    return {
        **coco_json,
        "images": [im for im in coco_json["images"] if im["id"] in keep],
        "annotations": [a for a in coco_json["annotations"] if a["image_id"] in keep],
    }


def evaluate_model(
    model, dataset: CocoDetection, batch_size: int = 32, max_images: int | None = None, progress: bool = True
) -> dict[str, float]:
    """{"AP", "AP50", "AP75", "APs", "APm", "APl", "num_images"} on ``dataset``."""
    results, image_ids = predict(model, dataset, batch_size, max_images, progress)
    ground_truth = dataset.coco_json if max_images is None else restrict_to_images(dataset.coco_json, image_ids)
    metrics = evaluate_coco(ground_truth, results)
    metrics["num_images"] = len(image_ids)
    return metrics
