"""Carve a held-out split out of a training split: choose settings on it, never on val.

``carve_split(root, "train", 500)`` writes ``annotations/instances_minitrain.json`` (the rest
of train) and ``annotations/instances_minival.json`` (500 images of train drawn with a fixed
seed), and links ``images/minitrain`` and ``images/minival`` to train's image folder, so
nothing is copied and both splits load like any other (``--train-split minitrain
--val-split minival``). Every other field of the annotation file is kept as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from detrdistill.data.coco import CocoDetection
from detrdistill.data.errors import DatasetError


def carve_split(root: str | os.PathLike, source: str = "train", count: int = 500, seed: int = 0,
                names: tuple[str, str] = ("minitrain", "minival")) -> tuple[str, str]:
    """Split ``source`` into (rest, held-out) of ``count`` images; returns the two split names.

    Re-carving with the same arguments rewrites the same files; a held-out split that exists
    with other images is refused rather than silently changed.
    """
    root = Path(root)
    dataset = CocoDetection(root, source)  # validates the source annotation file
    images = dataset.coco_json["images"]
    if not 0 < count < len(images):
        raise DatasetError(f"carve_split: count must be between 1 and {len(images) - 1} for split {source!r} "
                           f"({len(images)} images), got {count}")
    held_out_ids = {images[i]["id"] for i in np.random.default_rng(seed).choice(len(images), count, replace=False)}
    rest_name, held_name = names
    for name, keep in ((rest_name, False), (held_name, True)):
        chosen = [image for image in images if (image["id"] in held_out_ids) == keep]
        ids = {image["id"] for image in chosen}
        coco = {**dataset.coco_json, "images": chosen,
                "annotations": [a for a in dataset.coco_json["annotations"] if a["image_id"] in ids]}
        coco["info"] = {**coco.get("info", {}),
                        "carved_from": {"split": source, "held_out": count, "seed": seed, "part": name}}
        path = root / "annotations" / f"instances_{name}.json"
        if path.is_file() and keep:
            existing = {image["id"] for image in json.loads(path.read_text())["images"]}
            if existing != ids:
                raise DatasetError(f"{path} already holds another held-out split; remove it (and {rest_name}'s "
                                   "annotation file) to carve a new one")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(coco))
        os.replace(tmp, path)
        _link_images(root, name, dataset.image_dir)
    return rest_name, held_name


def _link_images(root: Path, name: str, image_dir: Path) -> None:
    link = root / "images" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(image_dir.resolve(), link.parent.resolve())
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.exists() or link.is_symlink():
        raise DatasetError(f"{link} exists and is not a link to {image_dir}: remove it or carve under other names")
    link.symlink_to(target, target_is_directory=True)
