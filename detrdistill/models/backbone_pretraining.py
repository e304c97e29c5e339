"""Pretrain a detector's ResNet backbone by classifying object crops, and cache it.

This is the analog of the paper's ImageNet initialisation: DETRs whose backbone starts
from random weights sit on a long loss plateau at this scale. The backbone learns to tell
the dataset's classes (plus a "background" class of object-free windows) apart from crops
with some context around each object; the detector then starts from these weights.

The cache key covers the backbone architecture, the pretraining settings and the
annotation file, so a teacher and a student of different widths get their own entries and
a changed dataset is never served a stale backbone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from transformers import ResNetBackbone

from detrdistill.config import BackboneConfig, BackbonePretrainingConfig
from detrdistill.data.coco import CocoDetection
from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detrdistill.models.build import resnet_config

# Crop window side relative to the object's longer side: context matters to a detector.
CONTEXT_RANGE = (1.1, 1.8)
BACKGROUND_CROPS_PER_IMAGE = 1
BACKGROUND_MAX_OVERLAP = 0.1  # a background window may cover at most this fraction of any object
VAL_FRACTION = 0.1


def cache_key(backbone: BackboneConfig, pretraining: BackbonePretrainingConfig, annotation_file: Path) -> str:
    architecture = {k: v for k, v in vars(backbone).items() if k not in ("out_features", "trainable")}
    digest = hashlib.sha256()
    digest.update(json.dumps([architecture, vars(pretraining)], sort_keys=True).encode())
    digest.update(annotation_file.read_bytes())
    return digest.hexdigest()[:16]


def _crop(image: Image.Image, center_x: float, center_y: float, side: float, crop_size: int) -> np.ndarray:
    # crop() pads with black where the window leaves the image, as a detector sees at borders.
    box = tuple(round(v) for v in (center_x - side / 2, center_y - side / 2, center_x + side / 2, center_y + side / 2))
    return np.asarray(image.crop(box).resize((crop_size, crop_size), Image.BILINEAR), dtype=np.uint8)


def _overlap_fraction(window: tuple, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each box [n, 4] (xyxy) covered by ``window``."""
    x0 = np.maximum(window[0], boxes[:, 0])
    y0 = np.maximum(window[1], boxes[:, 1])
    x1 = np.minimum(window[2], boxes[:, 2])
    y1 = np.minimum(window[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(areas, 1e-6)


def extract_crops(dataset: CocoDetection, crop_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All object crops plus background crops -> images [N, S, S, 3] uint8, labels [N]
    (background = dataset.num_classes)."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for index in tqdm(range(len(dataset)), desc="extracting crops", leave=False):
        image, target = dataset[index]
        boxes = target["boxes_xyxy_abs"].numpy()
        for box, label in zip(boxes, target["class_labels"].tolist(), strict=True):
            side = max(box[2] - box[0], box[3] - box[1]) * rng.uniform(*CONTEXT_RANGE)
            jitter = rng.uniform(-0.1, 0.1, size=2) * side
            cx, cy = (box[0] + box[2]) / 2 + jitter[0], (box[1] + box[3]) / 2 + jitter[1]
            crops.append(_crop(image, cx, cy, side, crop_size))
            labels.append(label)
        width, height = image.size
        for _ in range(BACKGROUND_CROPS_PER_IMAGE):
            side = rng.uniform(0.15, 0.5) * min(width, height)
            x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
            window = (x0, y0, x0 + side, y0 + side)
            if len(boxes) and _overlap_fraction(window, boxes).max() > BACKGROUND_MAX_OVERLAP:
                continue
            crops.append(_crop(image, x0 + side / 2, y0 + side / 2, side, crop_size))
            labels.append(dataset.num_classes)
    return np.stack(crops), np.asarray(labels, dtype=np.int64)


class CropClassifier(nn.Module):
    """ResNetBackbone + global average pool + linear head over its last stage."""

    def __init__(self, backbone: BackboneConfig, num_outputs: int):
        super().__init__()
        config = resnet_config(backbone)
        config.out_features = [config.stage_names[-1]]
        self.backbone = ResNetBackbone(config)
        self.head = nn.Linear(config.hidden_sizes[-1], num_outputs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> logits [B, num_outputs]."""
        feature_map = self.backbone(pixel_values).feature_maps[-1]
        return self.head(feature_map.mean(dim=(2, 3)))


def _to_tensor(crops_uint8: np.ndarray) -> torch.Tensor:
    images = torch.from_numpy(crops_uint8).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def pretrain_backbone(
    dataset: CocoDetection,
    backbone: BackboneConfig,
    pretraining: BackbonePretrainingConfig,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, torch.Tensor], dict]:
    """Train a crop classifier on ``device``; return (ResNetBackbone state_dict on the CPU, {"val_accuracy", ...}).

    The batch draws come from a CPU generator whatever the device, so the crops each step
    sees do not depend on it.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    crops, labels = extract_crops(dataset, pretraining.crop_size, seed)
    order = np.random.default_rng(seed).permutation(len(labels))
    num_val = max(1, int(len(labels) * VAL_FRACTION))
    val_idx, train_idx = order[:num_val], order[num_val:]
    train_images, train_labels = _to_tensor(crops[train_idx]).to(device), torch.from_numpy(labels[train_idx]).to(device)
    val_images, val_labels = _to_tensor(crops[val_idx]).to(device), torch.from_numpy(labels[val_idx]).to(device)

    model = CropClassifier(backbone, dataset.num_classes + 1).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=pretraining.lr, weight_decay=pretraining.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=pretraining.lr, total_steps=pretraining.steps)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(range(pretraining.steps), desc="pretraining backbone", disable=not progress)
    model.train()
    for _ in bar:
        batch = torch.randint(len(train_labels), (pretraining.batch_size,), generator=generator).to(device)
        images = train_images[batch]
        flip = (torch.rand(len(batch), generator=generator) < 0.5).to(device)
        images[flip] = images[flip].flip(-1)
        loss = F.cross_entropy(model(images), train_labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(-1) for chunk in val_images.split(256)])
    stats = {
        "val_accuracy": float((predicted == val_labels).float().mean()),
        "num_crops": int(len(labels)),
        "steps": pretraining.steps,
    }
    return {name: tensor.cpu() for name, tensor in model.backbone.state_dict().items()}, stats


def cached_backbone(
    dataset: CocoDetection,
    backbone: BackboneConfig,
    pretraining: BackbonePretrainingConfig,
    cache_dir: Path,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """Load the pretrained backbone from ``cache_dir`` or pretrain it on ``device`` and store it there.

    Returns (state_dict, stats, path of the cached file).
    """
    key = cache_key(backbone, pretraining, dataset.annotation_file)
    path = Path(cache_dir) / f"resnet-{key}-seed{seed}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["state_dict"], saved["stats"], path
    state_dict, stats = pretrain_backbone(dataset, backbone, pretraining, seed=seed, progress=progress, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state_dict, "stats": stats, "backbone": vars(backbone)}, tmp)
    os.replace(tmp, path)
    return state_dict, stats, path
