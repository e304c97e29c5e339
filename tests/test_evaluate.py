import copy
import math

import pytest
import torch

from detrdistill.box_ops import box_xyxy_to_cxcywh
from detrdistill.evaluate import evaluate_coco, format_ap_table, predictions_to_coco

# Class index -> COCO category id; deliberately non-contiguous.
CATEGORY_IDS = [3, 7, 12]
# image_id -> (orig_h, orig_w, scale); image 13 is resized anisotropically (scale_h, scale_w).
IMAGES = {10: (480, 640, 0.5), 11: (500, 300, 0.8), 12: (200, 200, 1.5), 13: (350, 250, (0.8, 1.2))}
# image_id -> [(category_id, [x, y, w, h] in original pixels)]. Boxes within an image do not
# overlap, leave room for a w/6 shift to the right, and stay clear of the top-left corner where
# the "no object" queries put their boxes. Areas: small (< 32^2) 600, 500; medium 4800, 1600,
# 9000; large (> 96^2) 18000, 24000.
GROUND_TRUTH = {
    10: [(3, [100, 80, 150, 120]), (7, [300, 200, 60, 80]), (12, [450, 350, 20, 30])],
    11: [(7, [50, 100, 120, 200]), (12, [200, 400, 40, 40])],
    12: [],
    13: [(3, [30, 40, 25, 20]), (12, [120, 150, 90, 100])],
}
BATCHES = [[10, 11], [12, 13]]
NUM_QUERIES = 4
EVERYTHING_LARGE = {"small": [0, 1], "medium": [1, 2], "large": [2, 1e10]}


def _coco_json() -> dict:
    objects = [(image_id, *obj) for image_id, objs in GROUND_TRUTH.items() for obj in objs]
    annotations = [
        {
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": bbox,
            "area": bbox[2] * bbox[3],
            "iscrowd": 0,
        }
        for ann_id, (image_id, category_id, bbox) in enumerate(objects, start=1)
    ]
    return {
        "images": [
            {"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"}
            for image_id, (h, w, _) in IMAGES.items()
        ],
        "categories": [{"id": category_id, "name": f"class{category_id}"} for category_id in CATEGORY_IDS],
        "annotations": annotations,
    }


def _scale_hw(image_id: int) -> tuple[float, float]:
    scale = IMAGES[image_id][2]
    return scale if isinstance(scale, tuple) else (scale, scale)


def _model_outputs(detections: dict, image_ids: list[int], use_sigmoid: bool):
    """Logits and normalised boxes that a model predicting exactly ``detections`` would emit."""
    resized_hw = [(round(IMAGES[i][0] * _scale_hw(i)[0]), round(IMAGES[i][1] * _scale_hw(i)[1])) for i in image_ids]
    # Pad beyond the largest image, as batching does, so the canvas differs from every image.
    padded_size = (max(h for h, _ in resized_hw) + 16, max(w for _, w in resized_hw) + 16)
    num_columns = len(CATEGORY_IDS) + (not use_sigmoid)
    logits = torch.full((len(image_ids), NUM_QUERIES, num_columns), -10.0)
    if not use_sigmoid:
        logits[..., -1] = 10.0  # "no object" unless a detection claims the query
    boxes_cxcywh = torch.full((len(image_ids), NUM_QUERIES, 4), 0.02)
    boxes_cxcywh[..., :2] = 0.03
    meta = []
    for row, image_id in enumerate(image_ids):
        scale_h, scale_w = _scale_hw(image_id)
        to_normalised = torch.tensor([scale_w / padded_size[1], scale_h / padded_size[0]] * 2)
        for query, (category_id, (x, y, w, h)) in enumerate(detections[image_id]):
            logits[row, query, :] = -10.0
            logits[row, query, CATEGORY_IDS.index(category_id)] = 10.0
            box_xyxy_abs = torch.tensor([x, y, x + w, y + h], dtype=torch.float64)
            boxes_cxcywh[row, query] = box_xyxy_to_cxcywh(box_xyxy_abs * to_normalised).float()
        meta.append({"image_id": image_id, "orig_size": IMAGES[image_id][:2], "scale": IMAGES[image_id][2]})
    return logits, boxes_cxcywh, meta, padded_size


def _predict(detections: dict, use_sigmoid: bool) -> list[dict]:
    results = []
    for image_ids in BATCHES:
        logits, boxes_cxcywh, meta, padded_size = _model_outputs(detections, image_ids, use_sigmoid)
        results += predictions_to_coco(logits, boxes_cxcywh, meta, padded_size, CATEGORY_IDS, use_sigmoid)
    return results


def _shifted_right_by_a_sixth() -> dict:
    # IoU of a box with itself shifted by w/6 is (5/6) / (7/6) = 5/7 ~ 0.714: a hit at
    # IoU thresholds 0.50..0.70 (5 of 10) and a miss at 0.75..0.95.
    return {
        image_id: [(category_id, [x + w / 6, y, w, h]) for category_id, (x, y, w, h) in objects]
        for image_id, objects in GROUND_TRUTH.items()
    }


def _assert_metrics(metrics: dict, expected: dict) -> None:
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(metrics[key]), key
        else:
            assert metrics[key] == pytest.approx(value, abs=1e-6), key


HEADS = pytest.mark.parametrize("use_sigmoid", [False, True], ids=["softmax", "sigmoid"])


def test_softmax_conversion_hand_values():
    # Resized 100 x 160 (scale 2) inside a 100 x 200 canvas: x pixels = normalised * 200 / 2.
    logits = torch.tensor([[[0.0, 2.0, 1.0], [3.0, 0.0, 5.0]]])  # query 1 prefers "no object"
    boxes_cxcywh = torch.tensor([[[0.25, 0.5, 0.1, 0.2], [0.75, 0.5, 0.2, 0.2]]])
    meta = [{"image_id": 5, "orig_size": (50, 80), "scale": 2.0}]
    results = predictions_to_coco(logits, boxes_cxcywh, meta, (100, 200), {0: 3, 1: 7}, False)

    assert [r["category_id"] for r in results] == [7, 3]
    softmax = logits[0].softmax(-1)
    assert [r["score"] for r in results] == pytest.approx([softmax[0, 1].item(), softmax[1, 0].item()])
    assert results[0]["bbox"] == pytest.approx([20, 20, 10, 10])
    # Spans x 65..85 in the original image, which is 80 wide: clipped to 65..80.
    assert results[1]["bbox"] == pytest.approx([65, 20, 15, 10])
    assert {r["image_id"] for r in results} == {5}


def test_sigmoid_keeps_best_query_class_pairs():
    logits = torch.tensor([[[4.0, 3.0], [-1.0, 2.0], [0.0, -5.0]]])
    boxes_cxcywh = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]]])
    meta = [{"image_id": 1, "orig_size": (10, 10), "scale": 1.0}]
    results = predictions_to_coco(logits, boxes_cxcywh, meta, (10, 10), [3, 7], use_sigmoid=True, max_detections=3)

    # Query 0 contributes two detections, one per class; query 2 none.
    assert [r["category_id"] for r in results] == [3, 7, 7]
    assert [r["bbox"][0] for r in results] == pytest.approx([4.0, 4.0, 1.0])
    assert [r["score"] for r in results] == pytest.approx(torch.tensor([4.0, 3.0, 2.0]).sigmoid().tolist())


@HEADS
def test_perfect_predictions_score_one(use_sigmoid):
    metrics = evaluate_coco(_coco_json(), _predict(GROUND_TRUTH, use_sigmoid))
    _assert_metrics(metrics, dict.fromkeys(["AP", "AP50", "AP75", "APs", "APm", "APl"], 1.0))


@HEADS
def test_shifted_boxes_hit_only_loose_thresholds(use_sigmoid):
    metrics = evaluate_coco(_coco_json(), _predict(_shifted_right_by_a_sixth(), use_sigmoid))
    _assert_metrics(metrics, {"AP": 0.5, "AP50": 1.0, "AP75": 0.0, "APs": 0.5, "APm": 0.5, "APl": 0.5})


@HEADS
def test_wrong_classes_lower_ap(use_sigmoid):
    rotated = {
        image_id: [(CATEGORY_IDS[(CATEGORY_IDS.index(c) + 1) % 3], bbox) for c, bbox in objects]
        for image_id, objects in GROUND_TRUTH.items()
    }
    metrics = evaluate_coco(_coco_json(), _predict(rotated, use_sigmoid))
    if use_sigmoid:
        # The right class is still scored, just below every wrong one.
        assert 0.0 < metrics["AP"] < 0.5
    else:
        assert metrics["AP"] == 0.0


def test_empty_results_score_zero():
    _assert_metrics(
        evaluate_coco(_coco_json(), []),
        dict.fromkeys(["AP", "AP50", "AP75", "APs", "APm", "APl"], 0.0),
    )


def test_no_annotations_at_all_gives_nan():
    coco_json = {**_coco_json(), "annotations": []}
    metrics = evaluate_coco(coco_json, _predict(GROUND_TRUTH, use_sigmoid=False))
    assert all(math.isnan(value) for value in metrics.values())


def test_everything_large_leaves_small_and_medium_empty():
    results = _predict(_shifted_right_by_a_sixth(), use_sigmoid=False)
    metrics = evaluate_coco(_coco_json(), results, area_ranges=EVERYTHING_LARGE)
    _assert_metrics(metrics, {"AP": 0.5, "APs": float("nan"), "APm": float("nan"), "APl": 0.5})


def test_area_ranges_from_info_and_argument_overrides_info():
    results = _predict(GROUND_TRUTH, use_sigmoid=True)
    coco_json = {**_coco_json(), "info": {"area_ranges": EVERYTHING_LARGE}}
    assert math.isnan(evaluate_coco(coco_json, results)["APs"])
    overridden = evaluate_coco(coco_json, results, area_ranges={"small": [0, 1e4], "large": [1e4, 1e10]})
    _assert_metrics(overridden, {"APs": 1.0, "APm": float("nan"), "APl": 1.0})


def test_custom_area_ranges_move_objects_between_buckets():
    # Miss the 150 x 120 (18000 px^2) class-3 box in image 10, find everything else.
    detections = {**GROUND_TRUTH, 10: GROUND_TRUTH[10][1:]}
    results = _predict(detections, use_sigmoid=False)

    default = evaluate_coco(_coco_json(), results)
    # Large by default: the missed class-3 box and the found class-7 box -> mean(0, 1).
    # Class 3 overall: 1 of 2 found first, so precision 1 for recall 0..0.5, i.e. 51 of 101 points.
    _assert_metrics(default, {"AP": (51 / 101 + 2) / 3, "APm": 1.0, "APl": 0.5})

    # Now the missed box is medium (with the class-12 9000 px^2 box) and only class 7 is large.
    custom = {"small": [0, 5000], "medium": [5000, 20000], "large": [20000, 1e10]}
    _assert_metrics(evaluate_coco(_coco_json(), results, custom), {"APs": 1.0, "APm": 0.5, "APl": 1.0})


def test_annotation_id_zero_duplicates_and_missing_fields_are_handled():
    coco_json = _coco_json()
    for annotation in coco_json["annotations"]:
        annotation["id"] = 0
        del annotation["area"], annotation["iscrowd"]
    metrics = evaluate_coco(coco_json, _predict(GROUND_TRUTH, use_sigmoid=False))
    _assert_metrics(metrics, dict.fromkeys(["AP", "AP50", "AP75", "APs", "APm", "APl"], 1.0))


def test_evaluate_does_not_modify_inputs():
    coco_json, results = _coco_json(), _predict(GROUND_TRUTH, use_sigmoid=False)
    coco_before, results_before = copy.deepcopy(coco_json), copy.deepcopy(results)
    evaluate_coco(coco_json, results)
    assert coco_json == coco_before
    assert results == results_before


def test_evaluate_is_silent(capsys):
    evaluate_coco(_coco_json(), _predict(GROUND_TRUTH, use_sigmoid=False))
    assert capsys.readouterr().out == ""


def test_unknown_image_ids_are_reported():
    result = {"image_id": 999, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}
    with pytest.raises(ValueError, match="999"):
        evaluate_coco(_coco_json(), [result])


def test_unknown_area_range_name_is_rejected():
    with pytest.raises(ValueError, match="tiny"):
        evaluate_coco(_coco_json(), [], area_ranges={"tiny": [0, 10]})


def test_label_mapping_must_match_head_convention():
    logits, boxes_cxcywh, meta, padded_size = _model_outputs(GROUND_TRUTH, [10], use_sigmoid=False)
    with pytest.raises(ValueError, match="use_sigmoid"):
        predictions_to_coco(logits, boxes_cxcywh, meta, padded_size, CATEGORY_IDS, use_sigmoid=True)
    with pytest.raises(ValueError, match="class index 2"):
        predictions_to_coco(logits, boxes_cxcywh, meta, padded_size, {0: 3, 1: 7}, use_sigmoid=False)
    with pytest.raises(ValueError, match="meta"):
        predictions_to_coco(logits, boxes_cxcywh, meta * 2, padded_size, CATEGORY_IDS, use_sigmoid=False)


def test_format_ap_table():
    rows = {
        "teacher": {
            "AP": 0.4213,
            "AP50": 0.6,
            "AP75": 0.45,
            "APs": float("nan"),
            "APm": 0.3,
            "APl": 0.5,
        },
        "student": {
            "AP": 0.25,
            "AP50": 0.5,
            "AP75": 0.2,
            "APs": 0.1,
            "APm": 0.2,
            "APl": 0.3,
            "step_ms": 12.5,
        },
    }
    assert format_ap_table(rows).splitlines() == [
        "| name | AP | AP50 | AP75 | APs | APm | APl | step_ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        "| teacher | 42.1 | 60.0 | 45.0 | - | 30.0 | 50.0 | - |",
        "| student | 25.0 | 50.0 | 20.0 | 10.0 | 20.0 | 30.0 | 12.5 |",
    ]
