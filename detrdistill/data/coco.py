"""COCO-format detection dataset with load-time validation, in the style of DETR's datasets/coco.py.

Layout: ``root/annotations/instances_<split>.json`` with images in ``root/images/<split>/`` or
``root/<split>/`` (the COCO 2017 layout, split "train2017" / "val2017"). Every problem in the
annotation file is reported at load time as a DatasetError naming the file, the record and the
field; image files are only opened in __getitem__ (see check_files() to stat them all up front).
A split whose decoded images fit in ``cache_mb`` keeps each image in memory after its first read,
since on a small CPU set like the embedded one decoding costs about half of a training batch's
loading time.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from detrdistill.config import INVALID_BOX_MODES
from detrdistill.data.errors import DatasetError
from detrdistill.data.images import ROTATING_ORIENTATIONS, exif_orientation, read_rgb

_REQUIRED_FIELDS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
_MAX_LISTED_MISSING = 10


class CocoDetection(Dataset):
    """A COCO detection split yielding (image, target) pairs.

    Before transforms the image is a PIL RGB image and the target is
    ``{"image_id": int, "boxes_xyxy_abs": FloatTensor [n, 4] pixels, "class_labels": LongTensor [n]
    (contiguous 0..C-1 in category-id order), "orig_size": LongTensor [2] (h, w)}``.
    Crowd annotations (iscrowd=1) stay in coco_json for evaluation but are left out of targets.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transforms: Callable | None = None,
        invalid_boxes: str = "clip",
        cache_mb: float = 0.0,
        allow_files_outside_root: bool = False,
    ):
        if invalid_boxes not in INVALID_BOX_MODES:
            raise ValueError(f"invalid_boxes must be one of {INVALID_BOX_MODES}, got {invalid_boxes!r}")
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.annotation_file = self.root / "annotations" / f"instances_{split}.json"
        self.coco_json = _load_json(self.annotation_file, self.root, split)
        self.image_dir = _find_image_dir(self.root, split, self.annotation_file)

        sections = _check_sections(self.coco_json, self.annotation_file)
        self._images = sections["images"]
        self.categories = _check_categories(sections["categories"], self.annotation_file)
        self.category_ids = [c["id"] for c in self.categories]
        self.label_to_category_id = list(self.category_ids)
        self.id2label = {label: str(c["name"]) for label, c in enumerate(self.categories)}
        self.num_classes = len(self.categories)
        self.image_ids = _check_images(self._images, self.annotation_file)
        if not allow_files_outside_root:
            _check_file_names_stay_inside(self._images, self.image_dir, self.annotation_file)

        self._boxes, self._labels, clipped = _index_annotations(
            sections["annotations"], self._images, self.category_ids, self.annotation_file, invalid_boxes
        )
        if clipped:
            warnings.warn(
                f"{self.annotation_file}: {len(clipped)} boxes extend outside their image and were clipped to it "
                f"(first: annotations[{clipped[0]}]). Fix them in the file, or set data.invalid_boxes: reject in the "
                "run's config (invalid_boxes='reject' in Python) to make this an error.",
                stacklevel=2,
            )
        # All or nothing, so a split's loading speed does not depend on the order images are read.
        self.caches_images = cache_mb > 0 and decoded_megabytes(self._images) <= cache_mb
        self._decoded: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple:
        record = self._images[index]
        image = self._load_image(index)
        target = {
            "image_id": record["id"],
            "boxes_xyxy_abs": torch.from_numpy(self._boxes[index].copy()),
            "class_labels": torch.from_numpy(self._labels[index].copy()),
            "orig_size": torch.tensor([image.height, image.width], dtype=torch.long),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def without_transforms(self) -> CocoDetection:
        """The same split yielding untransformed (PIL image, target) pairs, sharing the image cache."""
        raw = copy.copy(self)
        raw.transforms = None
        return raw

    def image_boxes(self, index: int) -> np.ndarray:
        """Image ``index``'s non-crowd boxes as loaded: float32 [n, 4] xyxy pixels (read-only)."""
        return self._boxes[index]

    def image_info(self, index: int) -> dict:
        """The JSON record of image `index` (id, file_name, width, height, ...)."""
        return self._images[index]

    def image_path(self, index: int) -> Path:
        """Where image `index` is expected on disk."""
        return self.image_dir / self._images[index]["file_name"]

    def check_files(self, check_sizes: bool = False) -> None:
        """Stats every image file and raises one DatasetError listing the missing ones; with
        ``check_sizes`` also reads each file's header (not its pixels) and lists those whose size,
        as viewers show it (EXIF orientation applied), differs from the record's width/height."""
        missing = [index for index in range(len(self)) if not self.image_path(index).is_file()]
        if missing:
            listed = "\n".join(f"  images[{i}]: {self.image_path(i)}" for i in missing[:_MAX_LISTED_MISSING])
            hidden = len(missing) - _MAX_LISTED_MISSING
            more = f"\n  ... and {hidden} more" if hidden > 0 else ""
            raise DatasetError(
                f"{len(missing)} of {len(self)} image files listed in {self.annotation_file} are missing:\n"
                f"{listed}{more}\nCopy the images into {self.image_dir} or fix the images[i].file_name fields."
            )
        if not check_sizes:
            return
        wrong = []
        for index, record in enumerate(self._images):
            try:
                with Image.open(self.image_path(index)) as image:
                    size = image.size[::-1] if exif_orientation(image) in ROTATING_ORIENTATIONS else image.size
            except (UnidentifiedImageError, OSError) as error:
                wrong.append(f"  images[{index}]: {self.image_path(index)} cannot be read ({error})")
                continue
            if size != (record["width"], record["height"]):
                wrong.append(f"  images[{index}]: {self.image_path(index)} is {size[0]}x{size[1]}, the record says "
                             f"{record['width']}x{record['height']}")
        if wrong:
            hidden = len(wrong) - _MAX_LISTED_MISSING
            more = f"\n  ... and {hidden} more" if hidden > 0 else ""
            raise DatasetError(
                f"{len(wrong)} of {len(self)} images listed in {self.annotation_file} do not match their records:\n"
                + "\n".join(wrong[:_MAX_LISTED_MISSING]) + more
                + "\nFix images[i].width/height (the size as viewers show the image) or replace the files."
            )

    def _load_image(self, index: int) -> Image.Image:
        # Transforms return new images (PIL operations do not work in place), so sharing is safe.
        cached = self._decoded.get(index)
        if cached is not None:
            return cached
        image = self._read_image(index)
        if self.caches_images:
            self._decoded[index] = image
        return image

    def _read_image(self, index: int) -> Image.Image:
        record = self._images[index]
        path = self.image_path(index)
        where = f"images[{index}] (id {record['id']}) of {self.annotation_file}"
        try:
            image, orientation = read_rgb(path)
        except FileNotFoundError:
            raise DatasetError(
                f"Image file {path} for {where} does not exist. Put the image there or fix "
                f"images[{index}].file_name; CocoDetection.check_files() lists every missing file."
            ) from None
        except (UnidentifiedImageError, OSError) as error:
            raise DatasetError(
                f"Image file {path} for {where} could not be read ({error}). The file is corrupt or not an "
                f"image: replace it, or remove images[{index}] and its annotations."
            ) from error
        if image.size != (record["width"], record["height"]) and orientation in ROTATING_ORIENTATIONS \
                and image.size == (record["height"], record["width"]):
            raise DatasetError(
                f"Image file {path} for {where} carries EXIF orientation {orientation}: viewers show it rotated, "
                f"{image.width}x{image.height}, and that is how it is read here, but the record says "
                f"{record['width']}x{record['height']}, the stored (unrotated) size. If its boxes were drawn on the "
                "picture as viewers show it, set width/height to the rotated size; if they were drawn on the stored "
                "pixels, save the image without its EXIF orientation tag (e.g. ImageOps.exif_transpose then save)."
            )
        if image.size != (record["width"], record["height"]):
            raise DatasetError(
                f"Image file {path} is {image.width}x{image.height} but {where} says "
                f"{record['width']}x{record['height']}. Fix images[{index}].width/height, or the boxes will be wrong."
            )
        return image


def decoded_megabytes(images: list[dict]) -> float:
    """Memory the decoded images of these records take: PIL stores RGB as 4 bytes a pixel."""
    return sum(record["width"] * record["height"] * 4 for record in images) / 2**20


def _load_json(path: Path, root: Path, split: str) -> dict:
    if not path.is_file():
        raise DatasetError(
            f"Annotation file {path} does not exist. Check root ({root}) and split ({split!r}): the reader "
            "expects root/annotations/instances_<split>.json."
        )
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"Annotation file {path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}). "
            "Repair or regenerate the file."
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(
            f"Annotation file {path} could not be read ({error}). Check the file's permissions and encoding (UTF-8)."
        ) from error


def _find_image_dir(root: Path, split: str, annotation_file: Path) -> Path:
    candidates = (root / "images" / split, root / split)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DatasetError(
        f"No image folder for {annotation_file.name}: neither {candidates[0]} nor {candidates[1]} exists. "
        "Put the images in one of them."
    )


def _check_sections(coco_json, path: Path) -> dict[str, list]:
    """The three top-level lists of a COCO detection file."""
    if not isinstance(coco_json, dict):
        raise DatasetError(
            f"{path}: the top level must be a JSON object with 'images', 'annotations' and 'categories', "
            f"found a {type(coco_json).__name__}."
        )
    missing = [key for key in _REQUIRED_FIELDS if key not in coco_json]
    if missing:
        raise DatasetError(
            f"{path}: missing top-level key(s) {', '.join(repr(k) for k in missing)}. A COCO detection file needs "
            "'images', 'annotations' and 'categories' lists (an image without objects simply has no annotations)."
        )
    for key in _REQUIRED_FIELDS:
        if not isinstance(coco_json[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list, found a {type(coco_json[key]).__name__}.")
    return {key: coco_json[key] for key in _REQUIRED_FIELDS}


def _check_fields(record, section: str, index: int, path: Path) -> None:
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: {section}[{index}] must be a JSON object, found a {type(record).__name__}.")
    for key in _REQUIRED_FIELDS[section]:
        if key not in record:
            raise DatasetError(
                f"{path}: {section}[{index}] has no field '{key}' ({section}[{index}].{key}). Every {section} record "
                f"needs {', '.join(_REQUIRED_FIELDS[section])}; add the field or remove the record."
            )


def _check_int(value, where: str, path: Path) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DatasetError(f"{path}: {where} must be an integer, found {value!r}. Fix the value.")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_categories(categories: list, path: Path) -> list[dict]:
    """Returns the category records sorted by id."""
    first_index = {}
    for index, category in enumerate(categories):
        _check_fields(category, "categories", index, path)
        _check_int(category["id"], f"categories[{index}].id", path)
        if category["id"] in first_index:
            first = first_index[category["id"]]
            raise DatasetError(
                f"{path}: categories[{index}].id {category['id']} repeats categories[{first}].id. "
                "Category ids must be unique; renumber one of them."
            )
        first_index[category["id"]] = index
    if not categories:
        raise DatasetError(f"{path}: 'categories' is empty. List every class as {{'id': ..., 'name': ...}}.")
    return sorted(categories, key=lambda category: category["id"])


def _check_images(images: list, path: Path) -> list[int]:
    """Returns the image ids in file order."""
    first_index = {}
    for index, image in enumerate(images):
        _check_fields(image, "images", index, path)
        _check_int(image["id"], f"images[{index}].id", path)
        if image["id"] in first_index:
            first = first_index[image["id"]]
            raise DatasetError(
                f"{path}: images[{index}].id {image['id']} repeats images[{first}].id. "
                "Image ids must be unique; renumber one of them (and its annotations)."
            )
        first_index[image["id"]] = index
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise DatasetError(
                f"{path}: images[{index}].file_name is {image['file_name']!r}; it must be the image's file name "
                "(a non-empty string). Fix the value."
            )
        for key in ("width", "height"):
            _check_int(image[key], f"images[{index}].{key}", path)
            if image[key] <= 0:
                raise DatasetError(f"{path}: images[{index}].{key} is {image[key]}; it must be > 0. Fix the value.")
    return [image["id"] for image in images]


def _bbox_from_segmentation(annotation: dict, images: list, image_index: dict, path: Path, where: str) -> list:
    """[x, y, w, h] of a polygon or RLE segmentation (pycocotools), for an annotation with no bbox."""
    from pycocotools import mask as coco_mask

    image = images[image_index[annotation["image_id"]]] if annotation.get("image_id") in image_index else None
    if image is None:
        raise DatasetError(f"{path}: {where}.image_id {annotation.get('image_id')!r} matches no record in 'images'. "
                           "Add the image record or remove the annotation.")
    segmentation = annotation["segmentation"]
    try:
        if isinstance(segmentation, list):
            rles = coco_mask.frPyObjects(segmentation, image["height"], image["width"])
            rle = coco_mask.merge(rles) if isinstance(rles, list) else rles
        else:
            rle = coco_mask.frPyObjects(segmentation, image["height"], image["width"]) \
                if isinstance(segmentation.get("counts"), list) else segmentation
        return [float(v) for v in coco_mask.toBbox(rle)]
    except Exception as error:  # pycocotools raises TypeError/ValueError/Exception on malformed input
        raise DatasetError(f"{path}: {where} has no bbox and its segmentation cannot be read ({error}): give a "
                           "bbox [x, y, width, height] or a valid polygon / RLE segmentation.") from error


def _check_file_names_stay_inside(images: list, image_dir: Path, path: Path) -> None:
    """Refuse a file_name that is absolute or climbs out of the image folder (``../``): an
    annotation file from elsewhere must not make the reader open files outside the dataset."""
    for index, image in enumerate(images):
        name = image["file_name"]
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
            raise DatasetError(
                f"{path}: images[{index}].file_name {name!r} points outside the image folder {image_dir}. "
                "Use a path relative to it; if the images really live elsewhere, set data.allow_files_outside_root: "
                "true (allow_files_outside_root=True in Python)."
            )


def _index_annotations(
    annotations: list, images: list, category_ids: list[int], path: Path, invalid_boxes: str
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Validates every annotation and groups the non-crowd ones per image.

    Returns per image: boxes float32 [n, 4] (x1, y1, x2, y2) pixels and labels int64 [n], plus
    the indices of the annotations whose boxes were clipped to their image.
    """
    image_index = {image["id"]: index for index, image in enumerate(images)}
    category_label = {category_id: label for label, category_id in enumerate(category_ids)}
    boxes = [[] for _ in images]
    labels = [[] for _ in images]
    clipped = []
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        if isinstance(annotation, dict) and "bbox" not in annotation and "segmentation" in annotation:
            # Segmentation-only annotations: the box is the mask's, and evaluation reads it from here too.
            annotation["bbox"] = _bbox_from_segmentation(annotation, images, image_index, path, where)
        _check_fields(annotation, "annotations", index, path)
        if annotation["image_id"] not in image_index:
            raise DatasetError(
                f"{path}: {where}.image_id {annotation['image_id']!r} matches no record in 'images'. "
                "Add the image record or remove the annotation."
            )
        if annotation["category_id"] not in category_label:
            raise DatasetError(
                f"{path}: {where}.category_id {annotation['category_id']!r} is not among the category ids "
                f"{category_ids[:20]}{' ...' if len(category_ids) > 20 else ''}. Add the category to 'categories' "
                "or fix the annotation."
            )
        bbox = annotation["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DatasetError(
                f"{path}: {where}.bbox is {bbox!r}; it must be a list of 4 finite numbers [x, y, width, height] "
                "in pixels. Fix or remove the annotation."
            )
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise DatasetError(
                f"{path}: {where}.bbox {bbox} has non-positive width or height, so it is rejected. "
                "Fix the box or remove the annotation."
            )
        j = image_index[annotation["image_id"]]
        width, height = images[j]["width"], images[j]["height"]
        box = [x, y, x + w, y + h]
        if x < 0 or y < 0 or x + w > width or y + h > height:
            if invalid_boxes == "reject":
                raise DatasetError(
                    f"{path}: {where}.bbox {bbox} extends outside its image images[{j}] ({width}x{height}) and is "
                    "rejected (invalid_boxes='reject'). Fix the box, or pass invalid_boxes='clip' to clip it."
                )
            limits = (width, height, width, height)
            box = [min(max(value, 0.0), limit) for value, limit in zip(box, limits, strict=True)]
            if box[2] <= box[0] or box[3] <= box[1]:
                raise DatasetError(
                    f"{path}: {where}.bbox {bbox} lies entirely outside its image images[{j}] ({width}x{height}), "
                    "so it is rejected. Fix the box or remove the annotation."
                )
            clipped.append(index)
        if annotation.get("iscrowd", 0):
            continue
        boxes[j].append(box)
        labels[j].append(category_label[annotation["category_id"]])
    return (
        [np.array(b, dtype=np.float32).reshape(-1, 4) for b in boxes],
        [np.array(lab, dtype=np.int64) for lab in labels],
        clipped,
    )
