"""Batching of variable-size images with padding masks, for a DataLoader's collate_fn."""

from __future__ import annotations

import torch


def collate_detection(batch: list[tuple[torch.Tensor, dict]], size_divisor: int = 1) -> dict:
    """Pads images bottom/right to the largest h and w in the batch, rounded up to a multiple of
    ``size_divisor`` (RT-DETR and D-FINE need 32: their FPN doubles each level into the next;
    ``adapter.size_divisor`` says what a model needs).

    Returns:
        pixel_values: FloatTensor [B, 3, H, W], zeros in the padding.
        pixel_mask: LongTensor [B, H, W], 1 on real pixels, 0 on padding.
        labels: per image {"class_labels": LongTensor [n], "boxes": FloatTensor [n, 4]}, boxes as
            (cx, cy, w, h) normalised by the PADDED canvas (W, H), so that predictions map back to
            pixels by multiplying by the padded size.
        meta: per image {"image_id", "orig_size": (h, w), "size": (h, w), "scale"}.
        padded_size: (H, W).
    """
    for index, (image, _) in enumerate(batch):
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise TypeError(
                f"collate_detection: batch item {index} has image of type {type(image).__name__}; it needs a "
                "tensor [3, h, w]. Build the dataset with transforms=build_transforms(...), which ends in "
                "ToTensorNormalize."
            )
    height = -(-max(image.shape[1] for image, _ in batch) // size_divisor) * size_divisor
    width = -(-max(image.shape[2] for image, _ in batch) // size_divisor) * size_divisor
    pixel_values = batch[0][0].new_zeros((len(batch), 3, height, width))
    pixel_mask = torch.zeros((len(batch), height, width), dtype=torch.long)
    canvas = torch.tensor([width, height, width, height], dtype=torch.float32)
    labels, meta = [], []
    for index, (image, target) in enumerate(batch):
        h, w = image.shape[1:]
        pixel_values[index, :, :h, :w] = image
        pixel_mask[index, :h, :w] = 1
        boxes = target["boxes_xyxy_abs"].to(torch.float32).reshape(-1, 4)
        labels.append(
            {
                "class_labels": target["class_labels"].to(torch.long).reshape(-1),
                "boxes": _xyxy_to_cxcywh(boxes) / canvas,
            }
        )
        meta.append(
            {
                "image_id": int(target["image_id"]),
                "orig_size": tuple(int(v) for v in target["orig_size"]),
                "size": (int(h), int(w)),
                "scale": float(target.get("scale", 1.0)),
            }
        )
    return {
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
        "labels": labels,
        "meta": meta,
        "padded_size": (height, width),
    }


def _xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[n, 4] (x1, y1, x2, y2) -> [n, 4] (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
