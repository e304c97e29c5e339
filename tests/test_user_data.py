"""Users' data: classes matched by name (eval on a dataset that numbers or names them otherwise,
a train/val pair whose category lists differ), empty splits, mis-sized images found up front."""

import json
import shutil

import pytest
import yaml
from PIL import Image

from detrdistill.cli import main
from detrdistill.config import config_to_dict
from detrdistill.data.coco import CocoDetection
from detrdistill.data.shapes import make_shapes
from detrdistill.data.transforms import build_transforms
from detrdistill.inference import load_for_dataset, predict
from tests.conftest import IMAGE_SIZE, make_tiny_run_config


@pytest.fixture(scope="module")
def trained(shapes_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    config_path = root / "run.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(make_tiny_run_config("conditional_detr", steps=2))))
    assert main(["train", "--config", str(config_path), "--data", str(shapes_dir), "--out", str(root / "run")]) == 0
    return root / "run", config_path


def _variant(shapes_dir, tmp_path, edit):
    data = shutil.copytree(shapes_dir, tmp_path / "data", symlinks=True)
    path = data / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    return data


def _eval(run, data, tmp_path):
    out = tmp_path / f"eval_{len(list(tmp_path.glob('eval_*')))}.json"
    code = main(["eval", str(run), "--data", str(data), "--out", str(out)])
    return code, (json.loads(out.read_text()) if code == 0 else None)


def _named_predictions(run, data):
    """(image id, class name, score, box) of every prediction, the model loaded as eval loads it."""
    dataset = CocoDetection(data, "val", transforms=build_transforms(False, IMAGE_SIZE))
    names = {c["id"]: c["name"] for c in dataset.categories}
    results, _ = predict(load_for_dataset(run, dataset), dataset, progress=False)
    return sorted((r["image_id"], names[r["category_id"]], round(r["score"], 5), tuple(round(v, 3) for v in r["bbox"]))
                  for r in results)


def test_the_same_names_under_other_ids_give_the_same_named_predictions(trained, shapes_dir, tmp_path):
    """Mapped by position, class k of the model would be scored as the dataset's k-th category
    whatever its name; the predictions must keep their names (and so their AP)."""
    run, _ = trained

    def renumber(coco):  # reverse the ids: the model's class k is now another id's k-th place
        ids = sorted(c["id"] for c in coco["categories"])
        new = dict(zip(ids, reversed(ids), strict=True))
        for category in coco["categories"]:
            category["id"] = new[category["id"]]
        for annotation in coco["annotations"]:
            annotation["category_id"] = new[annotation["category_id"]]

    renumbered = _variant(shapes_dir, tmp_path, renumber)
    assert _named_predictions(run, renumbered) == _named_predictions(run, shapes_dir)
    _, reference = _eval(run, shapes_dir, tmp_path)
    code, metrics = _eval(run, renumbered, tmp_path)
    assert code == 0 and metrics["AP"] == pytest.approx(reference["AP"], abs=1e-12)


def test_renamed_classes_are_refused_and_a_subset_is_scored(trained, shapes_dir, tmp_path, capsys):
    run, _ = trained

    def rename(coco):
        coco["categories"][0]["name"] = "zebra"

    assert _eval(run, _variant(shapes_dir, tmp_path / "a", rename), tmp_path)[0] == 2
    assert "zebra" in capsys.readouterr().err

    def keep_two(coco):
        kept = {c["id"] for c in coco["categories"][:2]}
        coco["categories"] = coco["categories"][:2]
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] in kept]

    code, subset = _eval(run, _variant(shapes_dir, tmp_path / "b", keep_two), tmp_path)
    assert code == 0 and 0.0 <= subset["AP"] <= 1.0


def test_train_and_val_with_different_categories_stop_before_training(trained, shapes_dir, tmp_path, capsys):
    _, config_path = trained

    def rename(coco):
        coco["categories"][0]["name"] = "zebra"

    data = _variant(shapes_dir, tmp_path, rename)
    out = tmp_path / "run"
    assert main(["train", "--config", str(config_path), "--data", str(data), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "list different categories" in error and "zebra" in error
    assert not (out / "model").exists()


@pytest.mark.parametrize("split,edit,message", [
    ("val", lambda coco: coco.update(images=[], annotations=[]), "lists no images"),
    ("val", lambda coco: coco.update(annotations=[]), "no (non-crowd) annotations"),
    ("train", lambda coco: coco.update(images=[], annotations=[]), "lists no images"),
])
def test_empty_splits_stop_with_the_reason_not_a_nan(trained, shapes_dir, tmp_path, capsys, split, edit, message):
    run, config_path = trained
    data = shutil.copytree(shapes_dir, tmp_path / "data", symlinks=True)
    path = data / "annotations" / f"instances_{split}.json"
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config_path), "--data", str(data), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not (out / "eval.json").exists()
    if split == "val":
        assert main(["eval", str(run), "--data", str(data), "--out", str(tmp_path / "e.json")]) == 2
        assert message in capsys.readouterr().err


def test_a_mis_sized_image_stops_the_run_before_it_starts(trained, shapes_dir, tmp_path, capsys):
    _, config_path = trained
    data = shutil.copytree(shapes_dir, tmp_path / "data")
    victim = sorted((data / "images" / "train").iterdir())[5]
    Image.new("RGB", (10, 12)).save(victim)
    out = tmp_path / "run"
    assert main(["train", "--config", str(config_path), "--data", str(data), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "do not match their records" in error and victim.name in error and "is 10x12" in error
    assert not out.exists()  # found before anything was written, not at the first read mid-training


def test_one_eval_dataset_for_training_eval_and_figures(tmp_path):
    """The val split is built in one place: training's evaluation, `detrdistill eval` and the
    figures see the same resize (max_size included) and the same checks."""
    from detrdistill.config import RunConfig
    from detrdistill.runs import eval_dataset as figures_dataset
    from detrdistill.training.prepare import eval_dataset, load_datasets

    config = RunConfig()
    config.data.image_size, config.data.max_size, config.data.invalid_boxes = 96, 100, "reject"
    data = tmp_path / "data"
    make_shapes(data, num_train=2, num_val=2, image_size=64, progress=False)
    _, training_val = load_datasets(data, config.data)
    for dataset in (training_val, eval_dataset(data, config.data), figures_dataset(data, config)):
        assert repr(dataset.transforms) == repr(training_val.transforms) and "max_size=100" in repr(dataset.transforms)
        assert dataset.caches_images == training_val.caches_images
