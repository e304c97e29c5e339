"""Everything a run needs before its first step: datasets and an initialised detector."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from detrdistill.config import DataConfig, RunConfig
from detrdistill.data.coco import CocoDetection
from detrdistill.data.errors import DatasetError
from detrdistill.data.transforms import build_transforms
from detrdistill.models.backbone_pretraining import cached_backbone
from detrdistill.models.build import build_detector, load_backbone_weights, load_detector
from detrdistill.models.label_sets import restrict_to_dataset_classes


def eval_dataset(data_dir: Path, data: DataConfig, split: str | None = None) -> CocoDetection:
    """A split (default: ``data.val_split``) exactly as training evaluates it: the deterministic
    resize (with ``max_size``), the box and file checks and the image cache of ``data``. The one
    place a split to evaluate on is built: training, ``detrdistill eval`` and the figures."""
    return CocoDetection(
        data_dir,
        split or data.val_split,
        transforms=build_transforms(False, data.image_size, data.max_size),
        invalid_boxes=data.invalid_boxes,
        cache_mb=data.cache_mb,
        allow_files_outside_root=data.allow_files_outside_root,
    )


def load_datasets(data_dir: Path, data: DataConfig) -> tuple[CocoDetection, CocoDetection]:
    """(augmented train split, deterministic val split)."""
    train_set = CocoDetection(
        data_dir,
        data.train_split,
        transforms=build_transforms(True, data.image_size, data.max_size),
        invalid_boxes=data.invalid_boxes,
        cache_mb=data.cache_mb,
        allow_files_outside_root=data.allow_files_outside_root,
    )
    val_set = eval_dataset(data_dir, data)
    check_not_empty(train_set, "train")
    check_not_empty(val_set, "val", needs_boxes=True)
    check_same_categories(train_set, val_set)
    if data.check_files:
        for dataset in (train_set, val_set):
            if dataset.caches_images:  # small enough that reading every header costs seconds
                dataset.check_files(check_sizes=True)
    return train_set, val_set


def check_not_empty(dataset: CocoDetection, role: str, needs_boxes: bool = False) -> None:
    """A split to train on needs images; one to evaluate on needs boxes too (AP is undefined
    without ground truth, and would be written as NaN)."""
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.annotation_file} lists no images, so there is nothing to "
                           f"{'train on' if role == 'train' else 'evaluate on'}: point data.{role}_split at a split "
                           "with images")
    if needs_boxes and not any(len(dataset.image_boxes(i)) for i in range(len(dataset))):
        raise DatasetError(f"{dataset.annotation_file} has images but no (non-crowd) annotations: COCO AP is "
                           f"undefined without ground-truth boxes. Evaluate on an annotated split (data.{role}_split)")


def check_same_categories(train_set: CocoDetection, val_set: CocoDetection) -> None:
    """The val split must list the train split's categories, by name and in the same id order:
    the model's class k is train's k-th category, and evaluation maps it to val's k-th."""
    if train_set.id2label == val_set.id2label:
        return
    train_names, val_names = list(train_set.id2label.values()), list(val_set.id2label.values())
    only_train = [n for n in train_names if n not in val_names]
    only_val = [n for n in val_names if n not in train_names]
    detail = (f"only in train: {only_train[:10]}; only in val: {only_val[:10]}" if only_train or only_val else
              f"the same names in another id order (train {train_names[:10]}, val {val_names[:10]})")
    raise DatasetError(
        f"{train_set.annotation_file} and {val_set.annotation_file} list different categories ({detail}). Give both "
        "splits the same 'categories' list (same ids and names)."
    )


def default_backbone_cache(data_dir: Path) -> Path:
    return Path(data_dir) / "backbones"


def prepare_detector(
    config: RunConfig, train_set: CocoDetection, backbone_cache: Path, progress: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[object, dict]:
    """A detector ready to train and a dict describing where its weights came from.

    ``model.pretrained`` set: load that directory. Otherwise build from the config and, when
    backbone pretraining is enabled, start the backbone from the cached crop-classifier
    (pretraining it first, on ``device``, if the cache has no entry). The detector stays on the CPU.
    """
    if config.model.pretrained:
        model = load_detector(config.model.pretrained)
        model = restrict_to_dataset_classes(model, train_set.id2label, config.model.pretrained)
        return model, {"init": f"from_pretrained {config.model.pretrained}"}
    model = build_detector(config.model, train_set.id2label)
    if not config.backbone_pretraining.enabled:
        return model, {"init": "random"}
    # Pretraining reads raw images and boxes, so it gets the split without detection transforms;
    # the images it decodes stay cached for training.
    raw_train = train_set.without_transforms()
    start = time.perf_counter()
    state_dict, stats, path = cached_backbone(
        raw_train, config.model.backbone, config.backbone_pretraining, backbone_cache, config.train.seed, progress,
        device,
    )
    load_backbone_weights(model, state_dict)
    return model, {"init": "pretrained backbone", "backbone_cache": str(path), "load_or_pretrain_s":
                   round(time.perf_counter() - start, 1), **stats}
