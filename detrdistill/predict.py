"""``detrdistill predict``: run a trained detector on image files, write COCO results (and pictures).

Images go through exactly the evaluation's path (``data/images.read_rgb``, the run's
evaluation transforms, ``evaluate.predictions_to_coco``), so the results of a val folder
score by pycocotools to the run's own eval.json. Image ids follow the COCO convention of a
numeric file name (``000000397133.jpg`` -> 397133), else the position in the sorted list;
``images.json`` beside the results maps every file to its id and size. Category ids are the
training dataset's (kept in the model's config as ``category_ids``); for a model without
them (a hub checkpoint) the class index, which for the hub's 91-slot COCO heads is the COCO id.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import torch
from PIL import ImageDraw
from tqdm.auto import tqdm

from detrdistill.config import RunConfig, load_config
from detrdistill.data.collate import collate_detection
from detrdistill.data.images import read_rgb
from detrdistill.data.transforms import build_transforms
from detrdistill.evaluate import predictions_to_coco
from detrdistill.models.adapters import adapter_for
from detrdistill.models.build import load_detector, resolve_model_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def image_paths(inputs: list[str | Path]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image files, in that order."""
    paths: list[Path] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise FileNotFoundError(f"{item}: no such file or folder, and no image matches it as a pattern")
            paths += matches
    if not paths:
        raise FileNotFoundError(f"no image files in {', '.join(map(str, inputs))} (suffixes {sorted(IMAGE_SUFFIXES)})")
    return list(dict.fromkeys(paths))


def image_ids(paths: list[Path]) -> list[int]:
    """COCO's numeric file names as ids when every name is a distinct number, else 1, 2, 3, ..."""
    stems = [p.stem for p in paths]
    if all(stem.isdigit() for stem in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(stem) for stem in stems]
    return list(range(1, len(paths) + 1))


def run_config_for(model_dir: Path) -> RunConfig:
    """The config of the run a model belongs to (RUN/config.yaml), else the defaults."""
    for candidate in (Path(model_dir) / "config.yaml", Path(model_dir).parent / "config.yaml"):
        if candidate.is_file():
            return load_config(candidate)
    return RunConfig()


@torch.no_grad()
def predict_images(model_dir: str | Path, paths: list[Path], batch_size: int = 16, threshold: float = 0.0,
                   progress: bool = True, image_size: int | None = None) -> tuple[list[dict], list[dict]]:
    """(COCO result dicts with score >= threshold, image records {id, file_name, width, height})."""
    model = load_detector(model_dir).eval()
    adapter = adapter_for(model)
    config = run_config_for(model_dir)
    transforms = build_transforms(False, image_size or config.data.image_size, config.data.max_size)
    num_classes = adapter.num_classes
    category_ids = list(getattr(model.config, "category_ids", None) or range(num_classes))
    device = next(model.parameters()).device
    ids = image_ids(paths)
    results, records = [], []
    for start in tqdm(range(0, len(paths), batch_size), desc="predicting", disable=not progress,
                      total=-(-len(paths) // batch_size)):
        batch = []
        for path, image_id in zip(paths[start:start + batch_size], ids[start:start + batch_size], strict=True):
            image, _ = read_rgb(path)
            records.append({"id": image_id, "file_name": str(path), "width": image.width, "height": image.height})
            target = {"image_id": image_id, "boxes_xyxy_abs": torch.zeros(0, 4), "class_labels": torch.zeros(0),
                      "orig_size": torch.tensor([image.height, image.width])}
            batch.append(transforms(image, target))
        collated = collate_detection(batch, adapter.size_divisor)
        output = model(pixel_values=collated["pixel_values"].to(device), pixel_mask=collated["pixel_mask"].to(device))
        results += [r for r in predictions_to_coco(output.logits, output.pred_boxes, collated["meta"],
                                                   collated["padded_size"], category_ids,
                                                   use_sigmoid=adapter.class_head == "sigmoid")
                    if r["score"] >= threshold]
    return results, records


def draw_detections(path: Path, detections: list[dict], names: dict[int, str], out: Path) -> None:
    """The image with its detections as labelled boxes, written to ``out``."""
    image, _ = read_rgb(path)
    draw = ImageDraw.Draw(image)
    for detection in detections:
        x, y, w, h = detection["bbox"]
        draw.rectangle([x, y, x + w, y + h], outline=(255, 60, 0), width=max(1, round(min(image.size) / 200)))
        draw.text((x + 2, y + 1), f"{names.get(detection['category_id'], detection['category_id'])} "
                                  f"{detection['score']:.2f}", fill=(255, 255, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)


def run_predict(model: str | Path, inputs: list[str], out: Path, threshold: float = 0.0, draw: bool = False,
                draw_threshold: float = 0.5, batch_size: int = 16, progress: bool = True) -> Path:
    """Write OUT/predictions.json (COCO results), OUT/images.json and, with ``draw``, OUT/drawn/."""
    model_dir = resolve_model_dir(model)
    paths = image_paths(inputs)
    results, records = predict_images(model_dir, paths, batch_size, threshold, progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps(records, indent=1))
    if draw:
        config = json.loads((model_dir / "config.json").read_text())
        category_ids = config.get("category_ids") or [int(k) for k in config["id2label"]]
        names = {category_ids[int(k)]: v for k, v in config["id2label"].items() if int(k) < len(category_ids)}
        by_image: dict[int, list[dict]] = {}
        for result in results:
            if result["score"] >= draw_threshold:
                by_image.setdefault(result["image_id"], []).append(result)
        for path, record in tqdm(list(zip(paths, records, strict=True)), desc="drawing", disable=not progress):
            draw_detections(path, by_image.get(record["id"], []), names, out / "drawn" / f"{path.stem}.png")
    return out / "predictions.json"
