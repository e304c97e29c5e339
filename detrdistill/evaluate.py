"""COCO box evaluation with pycocotools: model outputs -> COCO results -> AP table.

pycocotools quirks handled here:
  * it prints progress from ``COCO``/``COCOeval``; that output is swallowed;
  * ``COCO.loadRes`` crashes on an empty result list and mutates the result dicts,
    so detections are indexed without it (same fields it would add for boxes);
  * it reports -1 for an AP whose area range holds no ground-truth box; that is
    turned into ``float("nan")`` so it cannot be mistaken for a real score;
  * object sizes come from each annotation's ``"area"`` field (the segmentation
    area in COCO proper, not the box area); it is filled in as ``w * h`` only
    where missing;
  * a ground-truth annotation with id 0 is never matched (0 means "unmatched"
    inside COCOeval), so annotation ids are renumbered before scoring;
  * both ends of an area range are inclusive, so an object whose area equals a
    boundary counts in both neighbouring ranges.
"""

import contextlib
import copy
import io
import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from detrdistill.box_ops import box_cxcywh_to_xyxy

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
AREA_RANGE_NAMES = ("small", "medium", "large")


def predictions_to_coco(
    logits: Tensor,
    pred_boxes_cxcywh: Tensor,
    meta: Sequence[Mapping],
    padded_size: tuple[int, int],
    label_to_category_id: Sequence[int] | Mapping[int, int],
    use_sigmoid: bool,
    max_detections: int = 100,
) -> list[dict]:
    """Convert one batch of DETR outputs to COCO result dicts.

    Args:
        logits: ``[B, Q, C]`` for sigmoid heads (Conditional/Deformable DETR): every
            (query, class) pair is scored by sigmoid and the ``max_detections`` best
            pairs over all ``Q * C`` are kept per image. ``[B, Q, C + 1]`` for softmax
            heads (DETR): softmax, the last "no object" column is dropped, each query
            keeps its best class, and the ``max_detections`` best queries are kept.
        pred_boxes_cxcywh: ``[B, Q, 4]`` boxes normalised to the padded canvas.
        meta: ``B`` dicts with ``image_id``, ``orig_size`` ``(h, w)`` in pixels and
            ``scale`` = resized size / original size, a float or ``(scale_h, scale_w)``.
        padded_size: ``(H, W)`` in pixels of the padded canvas the boxes refer to.
        label_to_category_id: class index -> COCO category id, for every class index.
        use_sigmoid: which of the two logit conventions above ``logits`` follows.
        max_detections: detections kept per image.

    Returns:
        dicts ``{image_id, category_id, bbox, score}``, ``bbox`` being ``[x, y, w, h]``
        in original-image pixels, clipped to the image; per image, best score first.
    """
    _check_batch(logits, pred_boxes_cxcywh, meta, padded_size)
    scores, labels, query_indices = _select_detections(logits.detach().float().cpu(), use_sigmoid, max_detections)
    num_classes = logits.shape[-1] if use_sigmoid else logits.shape[-1] - 1
    category_ids = _category_lookup(label_to_category_id, num_classes)
    boxes_cxcywh = pred_boxes_cxcywh.detach().to("cpu", torch.float64)
    boxes_cxcywh = torch.gather(boxes_cxcywh, 1, query_indices[..., None].expand(-1, -1, 4))
    boxes_xyxy_abs = _to_original_pixels(boxes_cxcywh, meta, padded_size)
    boxes_xywh_abs = torch.cat([boxes_xyxy_abs[..., :2], boxes_xyxy_abs[..., 2:] - boxes_xyxy_abs[..., :2]], dim=-1)

    results = []
    for image_meta, image_scores, image_labels, image_boxes in zip(
        meta, scores.tolist(), category_ids[labels].tolist(), boxes_xywh_abs.tolist(), strict=True
    ):
        image_id = int(image_meta["image_id"])
        results.extend(
            {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}
            for score, category_id, bbox in zip(image_scores, image_labels, image_boxes, strict=True)
        )
    return results


def evaluate_coco(coco_json: dict, results: list[dict], area_ranges: dict | None = None) -> dict[str, float]:
    """COCO box AP of ``results`` against the ground truth ``coco_json`` (a COCO dict).

    Args:
        coco_json: COCO ground truth with ``images``, ``categories`` and
            ``annotations``; images without annotations are fine. Not modified.
        results: COCO result dicts as from ``predictions_to_coco``; may be empty.
            Detections of categories absent from ``coco_json`` are ignored, as
            pycocotools does.
        area_ranges: ``{"small": [lo, hi], "medium": ..., "large": ...}`` in pixels^2,
            replacing COCO's 32^2/96^2 split; a range left out reports NaN. When None,
            ``coco_json["info"]["area_ranges"]`` is used if present.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as floats in ``[0, 1]``, each
        NaN where no ground-truth box falls in that area range (e.g. no annotations).
    """
    ground_truth = _ground_truth_dataset(coco_json)
    if area_ranges is None:
        area_ranges = ground_truth.get("info", {}).get("area_ranges")

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _index(ground_truth)
        coco_dt = _index(
            {
                "images": ground_truth["images"],
                "categories": ground_truth["categories"],
                "annotations": _detections(results, valid_image_ids=set(coco_gt.getImgIds())),
            }
        )
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if area_ranges is not None:
            _set_area_ranges(evaluator, area_ranges)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    # summarize() writes AP, AP50, AP75, APs, APm, APl first, then the AR numbers.
    return {key: _nan_if_missing(value) for key, value in zip(AP_KEYS, evaluator.stats[: len(AP_KEYS)], strict=True)}


def format_ap_table(rows: dict[str, dict]) -> str:
    """Markdown table with one row per name: AP columns x100, then any extra numeric keys.

    ``rows`` maps a name to a metrics dict such as ``evaluate_coco`` returns, possibly
    with extra numeric entries (e.g. ``"step_ms"``), shown unscaled after the AP columns
    in order of first appearance. NaN or absent values show as ``-``.
    """
    extra_keys = []
    for metrics in rows.values():
        for key, value in metrics.items():
            if key not in AP_KEYS and key not in extra_keys and _is_number(value):
                extra_keys.append(key)

    header = ["name", *AP_KEYS, *extra_keys]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for name, metrics in rows.items():
        cells = [name]
        cells += [_format_number(metrics.get(key), lambda v: f"{100 * v:.1f}") for key in AP_KEYS]
        cells += [_format_number(metrics.get(key), lambda v: f"{v:.4g}") for key in extra_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _check_batch(logits: Tensor, pred_boxes_cxcywh: Tensor, meta: Sequence[Mapping], padded_size) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, Q, classes], got shape {tuple(logits.shape)}")
    batch_size, num_queries = logits.shape[:2]
    if tuple(pred_boxes_cxcywh.shape) != (batch_size, num_queries, 4):
        raise ValueError(
            f"pred_boxes_cxcywh must be [B, Q, 4] = [{batch_size}, {num_queries}, 4] "
            f"to match logits, got {tuple(pred_boxes_cxcywh.shape)}"
        )
    if len(meta) != batch_size:
        raise ValueError(f"meta has {len(meta)} entries but the batch has {batch_size} images")
    if len(padded_size) != 2:
        raise ValueError(f"padded_size must be (H, W), got {padded_size!r}")


def _select_detections(logits: Tensor, use_sigmoid: bool, max_detections: int) -> tuple[Tensor, Tensor, Tensor]:
    """Best detections of ``[B, Q, classes]`` logits.

    Returns ``(scores, labels, query_indices)``, each ``[B, K]``, best score first.
    """
    batch_size, num_queries, num_columns = logits.shape
    if use_sigmoid:
        pair_scores = logits.sigmoid().reshape(batch_size, num_queries * num_columns)
        scores, pair_indices = pair_scores.topk(min(max_detections, pair_scores.shape[1]), dim=1)
        return scores, pair_indices % num_columns, pair_indices // num_columns

    if num_columns < 2:
        raise ValueError(
            "softmax logits need C + 1 >= 2 columns (classes plus 'no object'), "
            f"got {num_columns}; pass use_sigmoid=True for sigmoid heads"
        )
    query_scores, query_labels = logits.softmax(-1)[..., :-1].max(-1)
    scores, query_indices = query_scores.topk(min(max_detections, num_queries), dim=1)
    return scores, torch.gather(query_labels, 1, query_indices), query_indices


def _category_lookup(label_to_category_id: Sequence[int] | Mapping[int, int], num_classes: int) -> Tensor:
    """``[num_classes]`` tensor of COCO category ids indexed by class index."""
    # A list of the wrong length almost always means the sigmoid/softmax convention is swapped.
    if not isinstance(label_to_category_id, Mapping) and len(label_to_category_id) != num_classes:
        raise ValueError(
            f"label_to_category_id has {len(label_to_category_id)} entries but the logits have "
            f"{num_classes} classes; check use_sigmoid (softmax logits carry one extra "
            "'no object' column)"
        )
    try:
        return torch.tensor([int(label_to_category_id[label]) for label in range(num_classes)])
    except (KeyError, IndexError) as error:
        raise ValueError(
            f"label_to_category_id has no category id for class index {error.args[0]}; "
            f"it must map every class index 0..{num_classes - 1}"
        ) from None


def _to_original_pixels(boxes_cxcywh: Tensor, meta: Sequence[Mapping], padded_size) -> Tensor:
    """``[B, K, 4]`` cxcywh normalised to the padded canvas -> ``[B, K, 4]`` xyxy original pixels.

    The result is clipped to each original image.
    """
    padded_h, padded_w = padded_size
    to_pixels, image_bounds = [], []
    for image_meta in meta:
        orig_h, orig_w = (float(side) for side in image_meta["orig_size"])
        scale_h, scale_w = torch.as_tensor(image_meta["scale"], dtype=torch.float64).expand(2).tolist()
        to_pixels.append([padded_w / scale_w, padded_h / scale_h] * 2)
        image_bounds.append([orig_w, orig_h] * 2)
    to_pixels = torch.tensor(to_pixels, dtype=torch.float64)[:, None, :]
    image_bounds = torch.tensor(image_bounds, dtype=torch.float64)[:, None, :]
    boxes_xyxy_abs = box_cxcywh_to_xyxy(boxes_cxcywh) * to_pixels
    return torch.minimum(boxes_xyxy_abs.clamp(min=0), image_bounds)


def _ground_truth_dataset(coco_json: dict) -> dict:
    """A copy of ``coco_json`` that COCOeval can score correctly."""
    for key in ("images", "categories"):
        if key not in coco_json:
            raise ValueError(f"coco_json has no '{key}' list; it must be a COCO detection dataset dict")
    # Deep copy: COCOeval writes 'ignore' flags into the annotation dicts.
    dataset = copy.deepcopy(coco_json)
    # Renumbered from 1: COCOeval records "unmatched" as id 0, so a ground-truth box with
    # id 0 could never count as found, and COCO indexes annotations by id, so duplicates vanish.
    for new_id, annotation in enumerate(dataset.setdefault("annotations", []), start=1):
        annotation["id"] = new_id
        # COCOeval reads both but, unlike COCO files, hand-built datasets may omit them.
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
        annotation.setdefault("iscrowd", 0)
    return dataset


def _detections(results: list[dict], valid_image_ids: set) -> list[dict]:
    """COCO result dicts -> detection annotations for a ``COCO`` index, as ``loadRes`` makes."""
    unknown_image_ids = {result["image_id"] for result in results} - valid_image_ids
    if unknown_image_ids:
        raise ValueError(
            "results refer to image ids not in the ground truth, e.g. "
            f"{sorted(unknown_image_ids)[:5]}; evaluate against the annotation file of the "
            "split that was predicted"
        )
    return [
        {**result, "id": index, "area": result["bbox"][2] * result["bbox"][3], "iscrowd": 0}
        # Ids start at 1: COCOeval treats id 0 as "unmatched".
        for index, result in enumerate(results, start=1)
    ]


def _index(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _set_area_ranges(evaluator: COCOeval, area_ranges: Mapping) -> None:
    unknown = set(area_ranges) - set(AREA_RANGE_NAMES)
    if unknown:
        raise ValueError(
            f"area_ranges may only name {list(AREA_RANGE_NAMES)} (COCOeval reports those three), got {sorted(unknown)}"
        )
    for name, (low, high) in area_ranges.items():
        if not low <= high:
            raise ValueError(f"area range '{name}' must be [low, high] with low <= high in pixels^2, got {[low, high]}")
    names = [name for name in AREA_RANGE_NAMES if name in area_ranges]
    # COCOeval.summarize() finds ranges by these labels; "all" keeps its default bounds.
    evaluator.params.areaRng = [[0.0, 1e5**2]] + [[float(v) for v in area_ranges[name]] for name in names]
    evaluator.params.areaRngLbl = ["all", *names]


def _nan_if_missing(value: float) -> float:
    return float("nan") if value == -1 else float(value)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _format_number(value, formatter) -> str:
    if not _is_number(value) or math.isnan(value):
        return "-"
    return formatter(value)
