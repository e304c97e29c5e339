"""Datasets, augmentation and batching for DETR-style detectors."""

from detrdistill.data.coco import CocoDetection
from detrdistill.data.collate import collate_detection
from detrdistill.data.errors import DatasetError
from detrdistill.data.shapes import make_shapes
from detrdistill.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    RandomHorizontalFlip,
    RandomResize,
    ToTensorNormalize,
    build_transforms,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CocoDetection",
    "Compose",
    "DatasetError",
    "RandomHorizontalFlip",
    "RandomResize",
    "ToTensorNormalize",
    "build_transforms",
    "collate_detection",
    "make_shapes",
]
