"""The trained student as a complete Hugging Face model: processor, pipeline, model card, predict."""

import json

import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from transformers import AutoImageProcessor, pipeline

from detrdistill.cli import main
from detrdistill.config import config_to_dict
from detrdistill.data.coco import CocoDetection
from detrdistill.data.transforms import build_transforms
from detrdistill.evaluate import evaluate_coco
from detrdistill.inference import load_for_dataset, predict
from detrdistill.predict import image_ids, image_paths
from tests.conftest import IMAGE_SIZE, make_tiny_run_config

FAMILIES = ("detr", "conditional_detr", "deformable_detr")
# The pipeline runs one image at a time: at 64 px the tiny Deformable DETR's stride-64 level is
# 1 x 1, too small for its GroupNorm alone; 96 px gives it 2 x 2.
RUN_IMAGE_SIZE = 96


@pytest.fixture(scope="module")
def runs(shapes_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    made = {}
    for family in FAMILIES:
        config_path = root / f"{family}.yaml"
        config = make_tiny_run_config(family, steps=3, lr=5e-3)
        config.data.image_size = RUN_IMAGE_SIZE
        config_path.write_text(yaml.safe_dump(config_to_dict(config)))
        out = root / family
        assert main(["train", "--config", str(config_path), "--data", str(shapes_dir), "--out", str(out)]) == 0
        made[family] = out
    return made


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_gives_the_projects_own_detections(runs, shapes_dir, family):
    run = runs[family]
    processor = AutoImageProcessor.from_pretrained(run / "model")
    assert processor.size["shortest_edge"] == RUN_IMAGE_SIZE and processor.do_pad
    detector = pipeline("object-detection", model=str(run / "model"))
    dataset = CocoDetection(shapes_dir, "val", transforms=build_transforms(False, RUN_IMAGE_SIZE))
    names = {c["id"]: c["name"] for c in dataset.categories}
    ours, _ = predict(load_for_dataset(run, dataset), dataset, progress=False)
    raw = dataset.without_transforms()
    for index in range(3):
        image, target = raw[index]
        theirs = detector(image, threshold=0.0)
        mine = sorted((r for r in ours if r["image_id"] == target["image_id"]), key=lambda r: -r["score"])
        assert len(theirs) == len(mine)
        theirs = sorted(theirs, key=lambda d: -d["score"])
        np.testing.assert_allclose([d["score"] for d in theirs], [r["score"] for r in mine], atol=1e-5)
        for detection, result in zip(theirs, mine, strict=True):
            if abs(detection["score"] - result["score"]) > 1e-4:
                continue
            x, y, w, h = result["bbox"]
            box = detection["box"]  # the pipeline truncates pixels to integers
            assert detection["label"] == names[result["category_id"]] or any(
                abs(other["score"] - detection["score"]) < 1e-6 for other in mine if other is not result)
            assert abs(box["xmin"] - x) < 1.5 and abs(box["ymax"] - (y + h)) < 1.5  # whole pixels + rounding


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_float_path_and_predict_score_the_runs_ap(runs, shapes_dir, tmp_path, family):
    """AP from the pipeline's own post-processing (before it rounds boxes to whole pixels) and
    from `detrdistill predict`'s results, scored by pycocotools directly, equal eval.json's."""
    run = runs[family]
    reference = json.loads((run / "eval.json").read_text())
    dataset = CocoDetection(shapes_dir, "val")
    detector = pipeline("object-detection", model=str(run / "model"))
    processor, model = detector.image_processor, detector.model
    category_ids = model.config.category_ids
    results = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        inputs = processor(images=image, return_tensors="pt")
        outputs = model(**inputs)
        post = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[image.size[::-1]])[0]
        for score, label, box in zip(post["scores"].tolist(), post["labels"].tolist(), post["boxes"].tolist(),
                                     strict=True):
            x0, y0, x1, y1 = (min(max(v, 0.0), IMAGE_SIZE) for v in box)
            results.append({"image_id": target["image_id"], "category_id": category_ids[label],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    assert evaluate_coco(dataset.coco_json, results)["AP"] == pytest.approx(reference["AP"], abs=1e-6)

    out = tmp_path / "predicted"
    assert main(["predict", str(run), str(shapes_dir / "images" / "val"), "--out", str(out), "--draw"]) == 0
    ground_truth = COCO(str(shapes_dir / "annotations" / "instances_val.json"))
    evaluator = COCOeval(ground_truth, ground_truth.loadRes(str(out / "predictions.json")), "bbox")
    area_ranges = ground_truth.dataset["info"]["area_ranges"]
    evaluator.params.areaRng = [[0, 1e10], area_ranges["small"], area_ranges["medium"], area_ranges["large"]]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(reference["AP"], abs=1e-9)
    assert len(list((out / "drawn").glob("*.png"))) == len(dataset)


def test_every_run_has_a_hub_ready_model_folder_with_a_card(runs):
    for family, run in runs.items():
        files = sorted(p.name for p in (run / "model").iterdir())
        assert files == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"], family
        card = (run / "model" / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        metrics = {m["name"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
        reference = json.loads((run / "eval.json").read_text())
        assert metrics["AP"] == pytest.approx(round(100 * reference["AP"], 2))
        assert front["pipeline_tag"] == "object-detection" and "## Reproduce" in card and "detrdistill" in card
        assert "small [0, " in card  # the area ranges used


def test_image_paths_and_ids_follow_coco_conventions(tmp_path, shapes_dir):
    folder = shapes_dir / "images" / "val"
    paths = image_paths([str(folder)])
    assert image_ids(paths[:3]) == [1, 2, 3]
    assert image_paths([str(folder / "00000[12].png")]) == paths[:2]
    with pytest.raises(FileNotFoundError, match="no such file"):
        image_paths([str(tmp_path / "missing*.png")])
    (tmp_path / "b.png").write_bytes((folder / "000001.png").read_bytes())
    (tmp_path / "a.png").write_bytes((folder / "000002.png").read_bytes())
    assert image_ids(image_paths([str(tmp_path)])) == [1, 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_in_the_hubs_layout_teaches(shapes_dir, tmp_path, family):
    """A hub COCO checkpoint has 91 class slots named by COCO id, "N/A" for the unused ones, and
    a processor beside it; built locally (no network), it must work as --teacher."""
    from detrdistill.models.processors import image_processor_for
    from tests.conftest import make_tiny_detector

    names = [c["name"] for c in CocoDetection(shapes_dir, "train").categories]
    hub_labels = {i: "N/A" for i in range(91)}
    for slot, name in zip((1, 3, 7, 18, 44, 90), names, strict=True):
        hub_labels[slot] = name
    teacher_dir = tmp_path / "hub_teacher"
    teacher = make_tiny_detector(family, id2label=hub_labels, perturb=0.1)
    teacher.save_pretrained(teacher_dir)
    image_processor_for(family, make_tiny_run_config(family).data).save_pretrained(teacher_dir)
    config = make_tiny_run_config("conditional_detr", steps=2)  # any teacher gives a sigmoid student targets
    config_path = tmp_path / "student.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(config)))
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher_dir), "--config", str(config_path), "--data", str(shapes_dir),
                 "--out", str(out)]) == 0
    card = (out / "model" / "README.md").read_text()
    assert str(teacher_dir) in card and "## Teacher" in card
