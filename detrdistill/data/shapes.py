"""Synthetic "shapes" detection dataset, written in the standard COCO layout.

Six classes differ in form (circle, square, triangle, cross, ring, diamond). Colour is only a
weak cue: each class has a base hue with strong jitter, and a fraction of objects get a fully
random colour. Objects sit on smooth gradient backgrounds with soft blobs, unannotated
distractor strokes and Gaussian noise.

Every image is generated from its own seed derived from (seed, split, index), so a dataset is
byte-identical for the same seed, and the first N images do not depend on how many follow.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from tqdm import tqdm

# --- Difficulty knobs. Pixel sizes are for REFERENCE_IMAGE_SIZE and scale with image_size. ---
REFERENCE_IMAGE_SIZE = 128
NUM_OBJECTS = (1, 4)  # inclusive, for images that are not empty
EMPTY_IMAGE_PROB = 0.03
SIZE_RANGE = (12.0, 60.0)  # object side in pixels, sampled log-uniformly
MAX_IOU = 0.3  # a placement whose box overlaps an earlier box more than this is retried
MIN_VISIBLE = 0.6  # ... as is one hiding more than 40% of an earlier object's pixels
MAX_OUTSIDE = 0.25  # fraction of an object's side that may fall outside the image
HUE_JITTER = 25.0  # degrees around the class hue (class hues are 60 degrees apart)
SATURATION_RANGE = (0.45, 1.0)
VALUE_RANGE = (0.45, 1.0)
RANDOM_COLOR_PROB = 0.3  # objects whose colour says nothing about their class
MIN_COLOR_DISTANCE = 80.0  # RGB distance from the background under the object
OUTLINE_PROB = 0.5  # objects drawn with a 1 px darker outline
NUM_DISTRACTORS = (0, 3)  # inclusive; thin lines, dots and arcs that are not annotated
NUM_BLOBS = (0, 3)  # inclusive; soft low-contrast background blobs
BLOB_AMPLITUDE = 30.0  # max per-channel blob intensity
NOISE_STD = 6.0  # Gaussian pixel noise over the finished image

BACKGROUND_DOWNSAMPLE = 4
PLACEMENT_TRIES = 20
COLOR_TRIES = 10

CATEGORIES = ("circle", "square", "triangle", "cross", "ring", "diamond")
# Rotations small enough that no class turns into another (a square at 45 degrees is a diamond).
MAX_ROTATION_DEG = {"circle": 0, "square": 15, "triangle": 20, "cross": 15, "ring": 0, "diamond": 15}
RING_HOLE_RANGE = (0.45, 0.65)  # inner radius / outer radius


def _cross(a: float) -> list[tuple[float, float]]:
    """A plus sign with arm half-thickness a."""
    return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]


# Polygons with half-extent 1, centred at the origin, y pointing down.
_POLYGONS = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],
    "diamond": [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)],
    "cross": _cross(0.33),
}

_SPLITS = ("train", "val")


def area_ranges(image_size: int) -> dict[str, list[float]]:
    """COCO's small/medium/large area thresholds (32 px and 96 px at 256 px) scaled to image_size."""
    small = 32.0 * image_size / 256
    medium = 96.0 * image_size / 256
    return {"small": [0.0, small**2], "medium": [small**2, medium**2], "large": [medium**2, 1e10]}


def make_shapes(
    out_dir: str | os.PathLike,
    num_train: int = 4000,
    num_val: int = 1000,
    seed: int = 0,
    image_size: int = 128,
    progress: bool = True,
) -> Path:
    """Write the dataset to out_dir and return out_dir as a Path.

    Layout: ``annotations/instances_{train,val}.json`` and ``images/{train,val}/000001.png``.
    """
    out_dir = Path(out_dir)
    counts = {"train": num_train, "val": num_val}
    for split_index, split in enumerate(_SPLITS):
        image_dir = out_dir / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in tqdm(range(counts[split]), desc=f"shapes {split}", disable=not progress):
            image_id = index + 1  # ids start at 1: pycocotools reads annotation id 0 as "unmatched"
            rng = np.random.default_rng([seed, split_index, index])
            image, objects = _render_image(rng, image_size)
            file_name = f"{image_id:06d}.png"
            image.save(image_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            for category_id, (x, y, w, h) in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": [float(x), float(y), float(w), float(h)],
                        "area": float(w * h),
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {
                "description": f"detrdistill synthetic shapes, {split} split, seed {seed}",
                "area_ranges": area_ranges(image_size),
            },
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)],
        }
        _write_json_atomic(out_dir / "annotations" / f"instances_{split}.json", coco)
    return out_dir


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _render_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list]:
    """Returns the RGB image and its objects as [(category_id, (x, y, w, h)), ...] in pixels."""
    scale = size / REFERENCE_IMAGE_SIZE
    image = Image.fromarray(_background(rng, size))
    _draw_distractors(rng, image, scale)
    objects = []
    visible = []  # per placed object: (bool [size, size] pixels still visible, its full pixel count)
    if rng.random() >= EMPTY_IMAGE_PROB:
        for _ in range(rng.integers(NUM_OBJECTS[0], NUM_OBJECTS[1] + 1)):
            placed = _place_object(rng, image, scale, objects, visible)
            if placed is not None:
                objects.append(placed)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * NOISE_STD
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)), objects


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear gradient between two random colours plus soft blobs; uint8 [size, size, 3]."""
    # Everything here is smooth, so it is computed on a coarse grid and upsampled (much faster).
    coarse = max(8, size // BACKGROUND_DOWNSAMPLE)
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    axis = np.linspace(0.0, 1.0, coarse, dtype=np.float32)
    yy, xx = axis[:, None], axis[None, :]
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / (t.max() - t.min())
    background = start + t[..., None] * (end - start)
    for _ in range(rng.integers(NUM_BLOBS[0], NUM_BLOBS[1] + 1)):
        cx, cy = rng.uniform(0, 1, 2)
        sigma = rng.uniform(0.05, 0.25)
        amplitude = rng.uniform(-BLOB_AMPLITUDE, BLOB_AMPLITUDE, 3).astype(np.float32)
        falloff = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        background += falloff[..., None] * amplitude
    coarse_image = Image.fromarray(np.clip(background, 0, 255).round().astype(np.uint8))
    return np.asarray(coarse_image.resize((size, size), Image.Resampling.BILINEAR))


def _draw_distractors(rng: np.random.Generator, image: Image.Image, scale: float) -> None:
    """Draws thin lines, small dots and open arcs, which must not be detected."""
    draw = ImageDraw.Draw(image)
    size = image.width
    for _ in range(rng.integers(NUM_DISTRACTORS[0], NUM_DISTRACTORS[1] + 1)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        width = max(1, round(rng.integers(1, 3) * scale))
        kind = rng.integers(3)
        x, y = rng.uniform(0, size, 2)
        if kind == 0:
            length = rng.uniform(0.1, 0.5) * size
            angle = rng.uniform(0, 2 * math.pi)
            draw.line([(x, y), (x + length * math.cos(angle), y + length * math.sin(angle))], fill=color, width=width)
        elif kind == 1:
            r = rng.uniform(1, 3) * scale
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
        else:
            # Arcs stay well short of a full circle so they cannot pass for rings.
            r = rng.uniform(0.04, 0.12) * size
            start = rng.uniform(0, 360)
            draw.arc([x - r, y - r, x + r, y + r], start, start + rng.uniform(60, 240), fill=color, width=width)


def _place_object(
    rng: np.random.Generator, image: Image.Image, scale: float, objects: list, visible: list
) -> tuple[int, tuple[int, int, int, int]] | None:
    """Draws one object onto image; returns (category_id, (x, y, w, h)) or None if no spot fits.

    Later objects are drawn on top, so a placement is retried when it would hide too much of an
    earlier one; `visible` is updated for the objects already placed.
    """
    size = image.width
    log_lo, log_hi = np.log(np.array(SIZE_RANGE) * scale)
    for _ in range(PLACEMENT_TRIES):
        class_index = int(rng.integers(len(CATEGORIES)))
        name = CATEGORIES[class_index]
        side = float(np.exp(rng.uniform(log_lo, log_hi)))
        margin = side / 2 - MAX_OUTSIDE * side
        cx, cy = rng.uniform(margin, size - margin, 2)
        angle = rng.uniform(-1, 1) * MAX_ROTATION_DEG[name]
        mask = _shape_mask(rng, name, size, cx, cy, side, angle)
        bbox = mask.getbbox()
        if bbox is None:
            continue
        x0, y0, x1, y1 = bbox
        box = (x0, y0, x1 - x0, y1 - y0)
        if any(_iou(box, other) > MAX_IOU for _, other in objects):
            continue
        covered = np.asarray(mask) > 0
        remaining = [pixels & ~covered for pixels, _ in visible]
        if any(left.sum() < MIN_VISIBLE * total for left, (_, total) in zip(remaining, visible, strict=True)):
            continue
        visible[:] = [(left, total) for left, (_, total) in zip(remaining, visible, strict=True)]
        visible.append((covered, int(covered.sum())))
        region = image.crop(bbox)
        background_mean = np.asarray(region, dtype=np.float32).reshape(-1, 3).mean(0)
        color = _object_color(rng, class_index, background_mean)
        # Paint only the box region: pasting through a full-image mask is the slow part.
        local_mask = mask.crop(bbox)
        region.paste(color, mask=local_mask)
        if rng.random() < OUTLINE_PROB:
            # Pad so that pixels on the box border (and the image border) count as edge.
            padded = Image.new("L", (local_mask.width + 2, local_mask.height + 2), 0)
            padded.paste(local_mask, (1, 1))
            eroded = padded.filter(ImageFilter.MinFilter(3)).crop((1, 1, padded.width - 1, padded.height - 1))
            region.paste(tuple(c // 2 for c in color), mask=ImageChops.subtract(local_mask, eroded))
        image.paste(region, bbox[:2])
        return class_index + 1, box
    return None


def _shape_mask(
    rng: np.random.Generator, name: str, size: int, cx: float, cy: float, side: float, angle_deg: float
) -> Image.Image:
    """An "L" mask [size, size] with the filled shape at 255."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    half = side / 2
    if name in ("circle", "ring"):
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=255)
        if name == "ring":
            inner = half * rng.uniform(*RING_HOLE_RANGE)
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
        return mask
    cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    points = [(cx + half * (x * cos - y * sin), cy + half * (x * sin + y * cos)) for x, y in _POLYGONS[name]]
    draw.polygon(points, fill=255)
    return mask


def _object_color(rng: np.random.Generator, class_index: int, background_mean: np.ndarray) -> tuple[int, int, int]:
    """A class-hued or random colour, retried until it stands out from background_mean."""
    random_color = rng.random() < RANDOM_COLOR_PROB
    class_hue = class_index * 360 / len(CATEGORIES)
    best, best_distance = None, -1.0
    for _ in range(COLOR_TRIES):
        if random_color:
            hsv = (rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.15, 1))
        else:
            hue = (class_hue + rng.uniform(-HUE_JITTER, HUE_JITTER)) / 360 % 1.0
            hsv = (hue, rng.uniform(*SATURATION_RANGE), rng.uniform(*VALUE_RANGE))
        rgb = np.round(np.array(colorsys.hsv_to_rgb(*hsv)) * 255)
        distance = float(np.linalg.norm(rgb - background_mean))
        if distance > best_distance:
            best, best_distance = rgb, distance
        if distance >= MIN_COLOR_DISTANCE:
            break
    return tuple(int(c) for c in best)


def _iou(a: tuple, b: tuple) -> float:
    """IoU of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)
