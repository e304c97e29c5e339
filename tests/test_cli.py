"""The command line end to end, on generated data and on a hand-written COCO directory."""

import json

import pytest
from PIL import Image, ImageDraw

from detrdistill.cli import main
from detrdistill.config import load_config
from detrdistill.data.coco import CocoDetection
from detrdistill.data.transforms import build_transforms
from detrdistill.inference import predict
from detrdistill.models.build import load_detector

AP_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}

# A tiny detector and a short run; no backbone pretraining. Everything else takes defaults.
TINY_YAML = """\
model:
  family: conditional_detr
  d_model: 32
  encoder_layers: 2
  decoder_layers: 3
  encoder_attention_heads: 4
  decoder_attention_heads: 4
  encoder_ffn_dim: 64
  decoder_ffn_dim: 64
  num_queries: 10
  backbone:
    embedding_size: 8
    hidden_sizes: [8, 16, 32, 64]
    depths: [1, 1, 1, 1]
    out_features: [stage3]
backbone_pretraining:
  enabled: false
data:
  image_size: 64
  batch_size: 4
  eval_batch_size: 8
train:
  steps: 3
  warmup_steps: 1
  log_every: 1
  checkpoint_every: 100
"""

# Categories listed out of id order, with non-contiguous ids: class indices follow the ids.
CATEGORIES = [{"id": 17, "name": "boat"}, {"id": 5, "name": "apple"}, {"id": 9, "name": "kite"}]
EXPECTED_ID2LABEL = {0: "apple", 1: "kite", 2: "boat"}
WIDTH, HEIGHT = 80, 60
COLOURS = {5: (220, 30, 30), 9: (30, 200, 40), 17: (40, 60, 220)}


def write_foreign_coco(root, split: str, num_images: int, first_id: int) -> None:
    """COCO 2017 style: root/annotations/instances_<split>.json and images in root/<split>/,
    80x60 images with one or two filled rectangles each; the last image has no objects."""
    image_dir = root / split
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in range(num_images):
        image_id = first_id + index
        image = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 110))
        draw = ImageDraw.Draw(image)
        objects = [] if index == num_images - 1 else [(index * 7) % 40 + 2, (index * 11) % 20 + 35][: 1 + index % 2]
        for number, x in enumerate(objects):
            category_id = [5, 9, 17][(index + number) % 3]
            y, w, h = 5 + number * 25, 18 + number * 4, 20
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[category_id])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        file_name = f"img_{image_id:04d}.jpg"
        image.save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": WIDTH, "height": HEIGHT})
    (root / "annotations").mkdir(exist_ok=True)
    coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


@pytest.fixture(scope="module")
def foreign_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign_coco")
    write_foreign_coco(root, "train2017", num_images=8, first_id=100)
    write_foreign_coco(root, "val2017", num_images=4, first_id=500)
    return root


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


def train_coco2017_layout(config, root, out) -> int:
    """``detrdistill train`` on a COCO 2017-style directory (splits train2017 / val2017)."""
    return main(["train", "--config", str(config), "--data", str(root), "--out", str(out),
                 "--train-split", "train2017", "--val-split", "val2017"])


@pytest.fixture(scope="module")
def trained_run(foreign_root, config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_runs") / "foreign"
    code = train_coco2017_layout(config_file, foreign_root, out)
    assert code == 0
    return out


def test_make_shapes_writes_coco_layout(tmp_path):
    out = tmp_path / "shapes"
    assert main(["make-shapes", str(out), "--train", "8", "--val", "4", "--image-size", "64"]) == 0
    for split, count in (("train", 8), ("val", 4)):
        coco = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert len(coco["images"]) == count
        assert {c["name"] for c in coco["categories"]} == {"circle", "square", "triangle", "cross", "ring", "diamond"}
        files = sorted(p.name for p in (out / "images" / split).glob("*.png"))
        assert files == sorted(image["file_name"] for image in coco["images"])
        with Image.open(out / "images" / split / files[0]) as image:
            assert image.size == (64, 64)
        assert all(image["width"] == image["height"] == 64 for image in coco["images"])
    assert len(CocoDetection(out, "val")) == 4


def test_train_on_a_foreign_coco_directory(trained_run):
    model = load_detector(trained_run / "model")
    assert {int(k): v for k, v in model.config.id2label.items()} == EXPECTED_ID2LABEL
    assert model.config.num_labels == 3
    config = load_config(trained_run / "config.yaml")
    assert (config.data.train_split, config.data.val_split) == ("train2017", "val2017")
    assert not config.backbone_pretraining.enabled and config.model.d_model == 32
    result = json.loads((trained_run / "eval.json").read_text())
    assert AP_KEYS <= set(result) and result["split"] == "val2017"
    assert result["steps"] == 3 and result["num_images"] == 4
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]


def test_eval_on_a_foreign_coco_directory(trained_run, foreign_root, tmp_path, capsys):
    assert main(["eval", str(trained_run), "--data", str(foreign_root), "--split", "val2017"]) == 0
    written = json.loads((trained_run / "eval_val2017.json").read_text())
    assert AP_KEYS <= set(written) and written["split"] == "val2017" and written["data"] == str(foreign_root)
    assert written["num_images"] == 4
    assert "wrote" in capsys.readouterr().out

    # A bare model directory works too, with the image size given on the command line.
    out = tmp_path / "model_eval.json"
    assert (
        main(
            [
                "eval",
                str(trained_run / "model"),
                "--data",
                str(foreign_root),
                "--split",
                "val2017",
                "--image-size",
                "64",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["AP"] == pytest.approx(written["AP"], nan_ok=True)

    # Predictions come back with the file's own category ids, inside the 80x60 originals.
    dataset = CocoDetection(foreign_root, "val2017", transforms=build_transforms(False, 64))
    results, image_ids = predict(load_detector(trained_run / "model"), dataset, progress=False)
    assert image_ids == [500, 501, 502, 503]
    assert results and {r["category_id"] for r in results} <= {5, 9, 17}
    for r in results:
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= WIDTH + 1e-6 and y + h <= HEIGHT + 1e-6


def test_unknown_config_field_is_reported(tmp_path, foreign_root, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(TINY_YAML.replace("  log_every: 1\n", "  log_evry: 1\n"))
    code = train_coco2017_layout(config, foreign_root, tmp_path / "run")
    assert code == 2
    err = capsys.readouterr().err
    assert "log_evry" in err and "train" in err
    assert not (tmp_path / "run").exists()


def test_corrupt_annotation_file_is_reported(tmp_path, config_file, capsys):
    root = tmp_path / "corrupt"
    write_foreign_coco(root, "train2017", num_images=4, first_id=1)
    write_foreign_coco(root, "val2017", num_images=4, first_id=50)
    annotation_file = root / "annotations" / "instances_train2017.json"
    annotation_file.write_text(annotation_file.read_text()[:-40])
    code = train_coco2017_layout(config_file, root, tmp_path / "run")
    assert code == 2
    err = capsys.readouterr().err
    assert "instances_train2017.json" in err and "not valid JSON" in err
