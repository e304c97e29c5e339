"""The synthetic shapes generator: determinism, COCO validity, class and size coverage."""

import json

import numpy as np
import pytest
from PIL import Image

from detrdistill.data import shapes
from detrdistill.data.shapes import make_shapes

NUM_TRAIN, NUM_VAL = 40, 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), num_train=NUM_TRAIN, num_val=NUM_VAL, progress=False)


def load(root, split):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def all_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    first = all_bytes(make_shapes(tmp_path / "a", num_train=6, num_val=2, seed=3, progress=False))
    second = all_bytes(make_shapes(tmp_path / "b", num_train=6, num_val=2, seed=3, progress=False))
    other = all_bytes(make_shapes(tmp_path / "c", num_train=6, num_val=2, seed=4, progress=False))
    assert first == second
    assert len(first) == 2 + 6 + 2
    assert first["annotations/instances_train.json"] != other["annotations/instances_train.json"]
    assert first["images/train/000001.png"] != other["images/train/000001.png"]
    # Train and val draw from different seeds.
    assert first["images/train/000001.png"] != first["images/val/000001.png"]


def test_pycocotools_loads_both_splits(dataset):
    coco_module = pytest.importorskip("pycocotools.coco")
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        coco = coco_module.COCO(str(dataset / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == count
        assert coco.getCatIds() == [1, 2, 3, 4, 5, 6]
        # pycocotools' matcher reads annotation id 0 as "unmatched".
        assert min(coco.getAnnIds()) >= 1


def test_records_follow_the_coco_schema(dataset):
    coco = load(dataset, "train")
    assert [c["name"] for c in coco["categories"]] == list(shapes.CATEGORIES)
    assert all(c["supercategory"] == "shape" for c in coco["categories"])
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    image_ids = {image["id"] for image in coco["images"]}
    for annotation in coco["annotations"]:
        assert annotation["image_id"] in image_ids
        assert annotation["iscrowd"] == 0
        assert annotation["area"] == annotation["bbox"][2] * annotation["bbox"][3]


def test_all_classes_and_every_size_range_occur(dataset):
    coco = load(dataset, "train")
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3, 4, 5, 6}
    ranges = coco["info"]["area_ranges"]
    for name, (low, high) in ranges.items():
        assert any(low <= a["area"] < high for a in coco["annotations"]), f"no {name} object"
    counts = [sum(a["image_id"] == image["id"] for a in coco["annotations"]) for image in coco["images"]]
    assert max(counts) <= shapes.NUM_OBJECTS[1]


def test_overlaps_stay_bounded(dataset):
    coco = load(dataset, "train")
    by_image = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["bbox"])
    pairs = [(a, b) for boxes in by_image.values() for i, a in enumerate(boxes) for b in boxes[:i]]
    assert pairs, "no image with two objects"
    assert max(shapes._iou(a, b) for a, b in pairs) <= shapes.MAX_IOU
    assert shapes._iou((0, 0, 4, 4), (2, 0, 4, 4)) == pytest.approx(8 / 24)


def test_area_ranges_scale_coco_thresholds_with_image_size():
    assert shapes.area_ranges(128) == {"small": [0.0, 256.0], "medium": [256.0, 2304.0], "large": [2304.0, 1e10]}
    assert shapes.area_ranges(256)["medium"] == [1024.0, 9216.0]


def test_boxes_lie_inside_their_images_and_images_have_the_recorded_size(dataset):
    for split in ("train", "val"):
        coco = load(dataset, split)
        sizes = {}
        for image in coco["images"]:
            with Image.open(dataset / "images" / split / image["file_name"]) as file:
                assert file.size == (image["width"], image["height"]) == (128, 128)
                assert file.mode == "RGB"
            sizes[image["id"]] = (image["width"], image["height"])
        for annotation in coco["annotations"]:
            x, y, w, h = annotation["bbox"]
            width, height = sizes[annotation["image_id"]]
            assert w > 0 and h > 0
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height


def test_image_size_scales_images_and_area_ranges(tmp_path):
    root = make_shapes(tmp_path, num_train=2, num_val=1, image_size=64, progress=False)
    coco = load(root, "train")
    assert coco["info"]["area_ranges"]["small"] == [0.0, 64.0]
    with Image.open(root / "images" / "train" / coco["images"][0]["file_name"]) as file:
        assert file.size == (64, 64)


def test_empty_images_are_written_without_annotations(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "EMPTY_IMAGE_PROB", 1.0)
    root = make_shapes(tmp_path, num_train=3, num_val=1, progress=False)
    coco = load(root, "train")
    assert len(coco["images"]) == 3
    assert coco["annotations"] == []


def test_box_is_the_tight_extent_of_the_drawn_shape():
    grey = (128, 128, 128)
    for seed in range(20):
        image = Image.new("RGB", (128, 128), grey)
        placed = shapes._place_object(np.random.default_rng(seed), image, 1.0, [], [])
        assert placed is not None
        _, (x, y, w, h) = placed
        changed = np.any(np.asarray(image) != grey, axis=2)
        rows, cols = np.nonzero(changed)
        assert (cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()) == (x, y, w, h)
