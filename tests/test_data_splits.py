"""carve_split: a held-out split from train, disjoint, complete, loadable, stable."""

import json
import shutil

import pytest

from detrdistill.cli import main
from detrdistill.data.coco import CocoDetection
from detrdistill.data.errors import DatasetError
from detrdistill.data.splits import carve_split


@pytest.fixture
def shapes_copy(shapes_dir, tmp_path):
    return shutil.copytree(shapes_dir, tmp_path / "shapes", symlinks=True)


def test_carved_splits_partition_train_and_load(shapes_copy):
    assert main(["carve-split", str(shapes_copy), "--count", "6"]) == 0
    train, rest, held = (CocoDetection(shapes_copy, s) for s in ("train", "minitrain", "minival"))
    ids = {name: {image["id"] for image in d.coco_json["images"]} for name, d in
           (("train", train), ("rest", rest), ("held", held))}
    assert len(ids["held"]) == 6 and not ids["rest"] & ids["held"] and ids["rest"] | ids["held"] == ids["train"]
    annotations = {name: len(d.coco_json["annotations"]) for name, d in (("rest", rest), ("held", held))}
    assert annotations["rest"] + annotations["held"] == len(train.coco_json["annotations"])
    assert held.coco_json["categories"] == train.coco_json["categories"]
    image, target = held[0]
    assert image.size[0] > 0 and len(target["class_labels"]) == len(target["boxes_xyxy_abs"])


def test_recarving_is_stable_and_another_carve_is_refused(shapes_copy):
    carve_split(shapes_copy, count=6, seed=0)
    first = json.loads((shapes_copy / "annotations" / "instances_minival.json").read_text())
    carve_split(shapes_copy, count=6, seed=0)
    assert json.loads((shapes_copy / "annotations" / "instances_minival.json").read_text()) == first
    with pytest.raises(DatasetError, match="another held-out split"):
        carve_split(shapes_copy, count=6, seed=1)
    with pytest.raises(DatasetError, match="count must be between"):
        carve_split(shapes_copy, count=10_000)
