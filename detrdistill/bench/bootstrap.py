"""Paired bootstrap over validation images for AP gains, without re-matching detections.

COCO AP is a function of per-image matching results: ``COCOeval.evaluate()`` matches each
image's detections to its ground truth once (per category and IoU threshold) and
``accumulate()`` pools those matches over the images into precision/recall curves. A
bootstrap resample of the images is a multiset, image i drawn c_i times, and pooling it
means counting image i's matches c_i times. So each run is evaluated once (``ap_table``:
per category, its detections' scores, true/false-positive flags and image, and the
per-image number of ground-truth boxes) and a resample's AP is a weighted accumulate
(``weighted_ap``), equal to COCOeval's AP on a dataset holding the drawn images as copies
(tested). Only AP (IoU .50:.95, all areas, 100 detections per image) is resampled.

A paired bootstrap draws one resample of image ids and scores both methods on it, so the
spread of the gain reflects which images were drawn, not two independent draws.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.cocoeval import COCOeval

# The same ground-truth and detection indexing as the project's evaluate_coco, so AP agrees.
from detrdistill.evaluate import _detections, _ground_truth_dataset, _index

ALL_AREAS = [0.0, 1e5**2]  # evaluate_coco's "all" range


@dataclass
class CategoryMatches:
    """One category's detections over all images, best score first (as ``accumulate`` sorts them).

    ``scores`` [D]; ``image_index`` [D] index into ``APTable.image_ids``; ``true_positive`` and
    ``false_positive`` [T, D] bool per IoU threshold (a detection matched to an ignored ground
    truth, e.g. a crowd box, is neither).
    """

    scores: np.ndarray
    image_index: np.ndarray
    true_positive: np.ndarray
    false_positive: np.ndarray


@dataclass
class APTable:
    """Everything AP needs to be re-accumulated on any multiset of the evaluated images.

    ``image_ids`` [I]; ``num_gt`` [K, I] non-ignored ground-truth boxes per category and image;
    ``categories`` K ``CategoryMatches``; ``recall_thresholds`` [R] (COCO's 101).
    """

    image_ids: np.ndarray
    num_gt: np.ndarray
    categories: list[CategoryMatches]
    recall_thresholds: np.ndarray

    def ap(self) -> float:
        """AP on the evaluated images themselves (every image once)."""
        return weighted_ap(self, np.ones(len(self.image_ids)))


def ap_table(coco_json: dict, results: list[dict]) -> APTable:
    """Match ``results`` (COCO result dicts) to ``coco_json``'s ground truth once, as COCOeval does."""
    ground_truth = _ground_truth_dataset(coco_json)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _index(ground_truth)
        coco_dt = _index({"images": ground_truth["images"], "categories": ground_truth["categories"],
                          "annotations": _detections(results, valid_image_ids=set(coco_gt.getImgIds()))})
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        # AP uses the "all" range only; evaluating the others would cost 3x more for nothing.
        evaluator.params.areaRng, evaluator.params.areaRngLbl = [ALL_AREAS], ["all"]
        evaluator.evaluate()
    params = evaluator.params
    num_images, max_detections = len(params.imgIds), params.maxDets[-1]
    num_gt = np.zeros((len(params.catIds), num_images))
    categories = []
    for k in range(len(params.catIds)):
        # evalImgs is ordered [category][area range][image]; there is one area range here.
        per_image = evaluator.evalImgs[k * num_images:(k + 1) * num_images]
        scores, image_index, matched, ignored = [], [], [], []
        for i, entry in enumerate(per_image):
            if entry is None:  # neither ground truth nor detections of this category in image i
                continue
            num_gt[k, i] = np.count_nonzero(entry["gtIgnore"] == 0)
            kept = entry["dtScores"][:max_detections]
            scores.append(np.asarray(kept, dtype=float))
            image_index.append(np.full(len(kept), i))
            matched.append(entry["dtMatches"][:, :max_detections] != 0)
            ignored.append(entry["dtIgnore"][:, :max_detections].astype(bool))
        num_thresholds = len(params.iouThrs)
        if not scores:
            empty = np.zeros((num_thresholds, 0), dtype=bool)
            categories.append(CategoryMatches(np.zeros(0), np.zeros(0, dtype=int), empty, empty))
            continue
        scores = np.concatenate(scores)
        # Stable sort of the concatenation in image order: accumulate()'s tie order.
        order = np.argsort(-scores, kind="mergesort")
        matched, ignored = np.concatenate(matched, axis=1)[:, order], np.concatenate(ignored, axis=1)[:, order]
        categories.append(CategoryMatches(scores[order], np.concatenate(image_index)[order],
                                          matched & ~ignored, ~matched & ~ignored))
    return APTable(np.asarray(params.imgIds), num_gt, categories, np.asarray(params.recThrs))


def weighted_ap(table: APTable, weights: np.ndarray) -> float:
    """AP with image i counted ``weights[i]`` times (COCOeval.accumulate + summarize, vectorised).

    Categories without ground truth among the weighted images are left out, as COCOeval
    leaves out their -1 precision; NaN when no category has any.
    """
    category_aps = []
    for k, matches in enumerate(table.categories):
        num_gt = float(weights @ table.num_gt[k])
        if num_gt == 0:
            continue
        detection_weights = weights[matches.image_index]
        kept = detection_weights > 0  # an undrawn image's detections are not in the pool at all
        detection_weights = detection_weights[kept]
        true_positives = np.cumsum(matches.true_positive[:, kept] * detection_weights, axis=1)
        false_positives = np.cumsum(matches.false_positive[:, kept] * detection_weights, axis=1)
        num_detections = true_positives.shape[1]
        precision_at_recall = np.zeros((true_positives.shape[0], len(table.recall_thresholds)))
        if num_detections:
            recall = true_positives / num_gt
            precision = true_positives / (false_positives + true_positives + np.spacing(1))
            # COCO's interpolation: precision at a point = the best precision at any higher recall.
            precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            for t in range(true_positives.shape[0]):
                at = np.searchsorted(recall[t], table.recall_thresholds, side="left")
                reached = at < num_detections  # recall thresholds never reached keep precision 0
                precision_at_recall[t, reached] = precision[t, at[reached]]
        category_aps.append(precision_at_recall.mean())
    return float(np.mean(category_aps)) if category_aps else float("nan")


def resample_counts(num_images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """[resamples, num_images]: how often each image is drawn, ``num_images`` draws with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, size=(resamples, num_images))
    counts = np.zeros((resamples, num_images))
    np.add.at(counts, (np.repeat(np.arange(resamples), num_images), draws.ravel()), 1)
    return counts


def resampled_aps(table: APTable, counts: np.ndarray) -> np.ndarray:
    """[resamples] AP of one run on each resample: ``weighted_ap`` for every row of ``counts``, batched.

    Only true-positive positions matter to interpolated AP: recall grows only there, and a
    false positive's precision is below that of the true positive before it, so it never
    sets the running maximum. At true positive j (per IoU threshold) the pooled counts are
    cum_tp = sum of the drawn weights of true positives 1..j and cum_fp = sum over images
    of (weight x that image's false positives ranked before j): one matrix product
    [resamples, images] @ [images, true positives] for all resamples. The weights are
    integer counts, so every sum is exact and the result equals ``weighted_ap``.
    """
    num_resamples = len(counts)
    num_thresholds, num_recalls = table.categories[0].true_positive.shape[0], len(table.recall_thresholds)
    ap_sums, num_categories = np.zeros(num_resamples), np.zeros(num_resamples)
    for k, matches in enumerate(table.categories):
        num_gt = counts @ table.num_gt[k]  # [resamples]
        present = num_gt > 0
        if not present.any():
            continue
        precision_sums = np.zeros(num_resamples)
        for t in range(num_thresholds):
            tp_at = np.flatnonzero(matches.true_positive[t])
            if len(tp_at) == 0:
                continue  # precision 0 at every recall threshold
            fp_at = np.flatnonzero(matches.false_positive[t])
            before = np.searchsorted(tp_at, fp_at)  # the first true positive ranked after each false positive
            counted = before < len(tp_at)
            fp_before = np.zeros((len(tp_at), len(table.image_ids)))  # [true positives, images]
            np.add.at(fp_before, (before[counted], matches.image_index[fp_at[counted]]), 1)
            cum_fp = counts @ np.cumsum(fp_before, axis=0).T  # [resamples, true positives]
            cum_tp = np.cumsum(counts[:, matches.image_index[tp_at]], axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                recall = cum_tp / num_gt[:, None]
            precision = cum_tp / (cum_fp + cum_tp + np.spacing(1))
            precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            for b in np.flatnonzero(present):
                at = np.searchsorted(recall[b], table.recall_thresholds, side="left")
                precision_sums[b] += precision[b, at[at < len(tp_at)]].sum()
        ap_sums[present] += precision_sums[present] / (num_thresholds * num_recalls)
        num_categories[present] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(num_categories > 0, ap_sums / np.maximum(num_categories, 1), np.nan)


@dataclass
class GainInterval:
    """Gain in AP (fraction) of method A over method B with a bootstrap percentile interval."""

    gain: float
    low: float
    high: float
    resamples: int
    seeds: int

    def to_dict(self) -> dict:
        return {"gain": self.gain, "low": self.low, "high": self.high, "resamples": self.resamples,
                "seeds": self.seeds}


def paired_gain(
    runs_a: Sequence[np.ndarray | APTable], runs_b: Sequence[np.ndarray | APTable], counts: np.ndarray,
    full_a: Sequence[float] | None = None, full_b: Sequence[float] | None = None, level: float = 0.95,
) -> GainInterval:
    """Mean-over-seeds AP of A minus that of B, with a paired bootstrap ``level`` interval.

    ``runs_a``/``runs_b``: one entry per seed, an ``APTable`` or its ``resampled_aps`` on
    ``counts`` (precomputed, so a baseline shared by many rows is resampled once). Seeds are
    pooled per resample: the gain on resample b is mean_s AP_a(s, b) - mean_s AP_b(s, b).
    ``full_a``/``full_b``: the APs on the full split, needed when passing arrays.
    """
    if not runs_a or not runs_b:
        raise ValueError("paired_gain needs at least one run on each side")
    full_a = [r.ap() for r in runs_a] if full_a is None else full_a
    full_b = [r.ap() for r in runs_b] if full_b is None else full_b
    per_resample_a = np.mean([r if isinstance(r, np.ndarray) else resampled_aps(r, counts) for r in runs_a], axis=0)
    per_resample_b = np.mean([r if isinstance(r, np.ndarray) else resampled_aps(r, counts) for r in runs_b], axis=0)
    gains = per_resample_a - per_resample_b
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(gains, [tail, 100 - tail])
    return GainInterval(float(np.mean(full_a) - np.mean(full_b)), float(low), float(high), len(counts),
                        min(len(runs_a), len(runs_b)))


def check_same_images(tables: Sequence[APTable], names: Sequence[str]) -> None:
    """Paired resampling needs every run scored on the same images."""
    reference = tables[0].image_ids
    for table, name in zip(tables[1:], names[1:], strict=True):
        if not np.array_equal(table.image_ids, reference):
            raise ValueError(
                f"{name} was evaluated on other val images than {names[0]} ({len(table.image_ids)} vs "
                f"{len(reference)}): rerun it on the same --data"
            )


def save_ap_table(path: Path, table: APTable) -> None:
    arrays = {"image_ids": table.image_ids, "num_gt": table.num_gt, "recall_thresholds": table.recall_thresholds}
    for k, matches in enumerate(table.categories):
        arrays.update({f"scores_{k}": matches.scores, f"image_index_{k}": matches.image_index,
                       f"true_positive_{k}": matches.true_positive, f"false_positive_{k}": matches.false_positive})
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(temporary, **arrays)
    temporary.replace(path)


def load_ap_table(path: Path) -> APTable:
    with np.load(path) as arrays:
        categories = [
            CategoryMatches(arrays[f"scores_{k}"], arrays[f"image_index_{k}"], arrays[f"true_positive_{k}"],
                            arrays[f"false_positive_{k}"])
            for k in range(len(arrays["num_gt"]))
        ]
        return APTable(arrays["image_ids"], arrays["num_gt"], categories, arrays["recall_thresholds"])
