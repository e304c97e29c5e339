"""Every figure of the analysis from trained runs, as PNG files (``detrdistill figures``).

    fig4_query_masks.png      per-query masks psi_i of the teacher (paper Fig. 4)
    fig6_quality_masks.png    vanilla vs quality-weighted mask per feature level (Fig. 6)
    fig7_instability.png      IS per decoder stage pair: teacher, student, one-epoch students (Fig. 7)
    fig_predictions.png       detections of teacher, student and DETRDistill student
    fig_ld_pairs.png          the teacher-student pairs logits distillation trains on
    fig_teacher_queries.png   the teacher's queries answered by AD-trained students
    figures.json              the numbers behind Fig. 7 and the AD panel, and the runs used

written by ``write_figures(draw_figures(...))``, and, from an AdaMixer run (``make_adamixer_figures``):

    fig2_adamixer_points.png  where the queries matched to each object sample (Fig. 2 (c))
    fig_adamixer_levels.png   the feature stride each query reads against its box size
    figures_adamixer.json     the share of sampling points inside the object's box, the run used

Only inference, except that the two one-epoch students of Fig. 7 are trained when their run
directories are given but not finished (``train_one_epoch``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from detrdistill.analysis.adamixer_points import (
    inside_shares,
    matched_queries,
    plot_active_regions,
    plot_level_by_box_size,
    stage_points,
)
from detrdistill.analysis.draw import load_batch, pick_images
from detrdistill.analysis.instability import InstabilityResult, runs_instability
from detrdistill.analysis.ld_matching import ld_pairs, plot_ld_pairs
from detrdistill.analysis.masks import compute_masks, plot_level_masks, plot_loss_weights, plot_query_masks
from detrdistill.analysis.predictions import detect, plot_detections
from detrdistill.analysis.query_prior import (
    answer_teacher_queries,
    load_query_map,
    mean_assigned_iou,
    plot_teacher_query_answers,
)
from detrdistill.analysis.workspace import train_one_epoch
from detrdistill.models.adapters import adapter_for
from detrdistill.runs import eval_dataset, is_finished, load_run

DPI = 90  # small enough to commit, large enough for the 128 px images
FIG4, FIG6, FIG7 = "fig4_query_masks.png", "fig6_quality_masks.png", "fig7_instability.png"
FIG_FD_WEIGHTS = "fig_fd_loss_weights.png"  # what each FD mask form weights, beside Fig. 6's sum q psi
FIG_PREDICTIONS, FIG_LD, FIG_TEACHER_QUERIES = "fig_predictions.png", "fig_ld_pairs.png", "fig_teacher_queries.png"
SUMMARY = "figures.json"
FIG2_ADAMIXER, FIG_ADAMIXER_LEVELS = "fig2_adamixer_points.png", "fig_adamixer_levels.png"
ADAMIXER_SUMMARY = "figures_adamixer.json"
LABELS = {"teacher": "teacher", "student": "student", "epoch": "student, 1 epoch",
          "ad": "student, 1 epoch + AD", "distilled": "DETRDistill student"}


def plot_instability(results: list[InstabilityResult]) -> Figure:
    """Fig. 7 analog: grouped bars of mean IS per decoder stage pair, one colour per model."""
    figure = Figure(figsize=(1.6 + 1.3 * len(results[0].per_pair) * max(len(results), 2) / 2, 3.2),
                    layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(results)
    pairs = np.arange(len(results[0].per_pair))
    for i, result in enumerate(results):
        bars = ax.bar(pairs + (i - (len(results) - 1) / 2) * width, result.per_pair, width, label=result.label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(pairs, [f"stage {name}" for name in results[0].pair_names])
    ax.set_ylabel("IS (predictions changing GT per image)")
    ax.set_title(f"Assignment instability between decoder stages ({results[0].num_images} val images, "
                 f"{results[0].num_queries} queries)", fontsize=9)
    ax.legend(fontsize=7)
    return figure


def save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    return path


@dataclass
class DrawnFigures:
    """The analysis figures before they are saved: {file name: Figure}, and the numbers
    behind them (``figures.json``)."""

    figures: dict[str, Figure]
    summary: dict


def draw_figures(
    data_dir: str | Path,
    teacher: str | Path,
    student: str | Path,
    distilled: str | Path | None = None,
    epoch_run: str | Path | None = None,
    ad_run: str | Path | None = None,
    num_images: int = 3,
    is_images: int | None = 500,
    split: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> DrawnFigures:
    """Draw every DETRDistill figure from finished runs (``write_figures`` saves them).

    Args:
        data_dir: the dataset (its val split, or ``split``).
        teacher, student, distilled: finished run directories.
        epoch_run, ad_run: one-epoch student runs (plain, and assignment distillation only)
            for Fig. 7; trained from ``student``'s config (and ``teacher``) when not finished.
        num_images: images in the picture figures; is_images: val images for IS (None: all).
    """
    runs = {"teacher": teacher, "student": student, "distilled": distilled}
    student_config = load_run(student).config
    for key, path, with_teacher in (("epoch", epoch_run, None), ("ad", ad_run, teacher)):
        if path is not None and not is_finished(path):
            print(f"[figures] training {LABELS[key]} into {path}")
            train_one_epoch(student_config, data_dir, path, teacher=with_teacher, progress=progress)
    runs.update(epoch=epoch_run, ad=ad_run)
    loaded = {key: load_run(path) for key, path in runs.items() if path is not None}
    teacher_run = loaded["teacher"]
    dataset = eval_dataset(data_dir, teacher_run.config, split)
    names = dataset.id2label
    batch = load_batch(dataset, pick_images(dataset, num_images))
    fd_config = (loaded.get("distilled") or loaded["student"]).config.distill.features
    figures = {}

    masks = compute_masks(teacher_run.model, batch, teacher_run.config.loss, fd_config, device=device)
    figures[FIG4] = plot_query_masks(masks, names)
    figures[FIG6] = plot_level_masks(masks[:2], names)  # two images, as the paper
    figures[FIG_FD_WEIGHTS] = plot_loss_weights(masks[0], names)

    order = [key for key in ("teacher", "student", "epoch", "ad", "distilled") if key in loaded]
    results = runs_instability({LABELS[key]: loaded[key].path for key in order}, data_dir, is_images, split, device,
                               progress)
    figures[FIG7] = plot_instability(results)

    shown = [key for key in ("teacher", "student", "distilled") if key in loaded]
    detections = {LABELS[key]: detect(loaded[key].model, batch, device=device) for key in shown}
    figures[FIG_PREDICTIONS] = plot_detections(batch, detections, names)

    pairs_of = loaded.get("distilled") or loaded["student"]
    pairs = ld_pairs(teacher_run.model, pairs_of.model, batch, -1, teacher_run.config.loss,
                     pairs_of.config.distill.logits)
    figures[FIG_LD] = plot_ld_pairs(batch, pairs)

    answers = {}
    teacher_dim = adapter_for(teacher_run.model).query_dim
    for key in ("ad", "distilled"):
        if key in loaded and loaded[key].config.distill.assignment.enabled:
            student_dim = adapter_for(loaded[key].model).query_dim
            query_map = load_query_map(loaded[key].path, teacher_dim, student_dim)
            answers[LABELS[key]] = answer_teacher_queries(loaded[key].model, teacher_run.model, batch, query_map,
                                                          teacher_run.config.loss)
    if answers:
        figures[FIG_TEACHER_QUERIES] = plot_teacher_query_answers(batch, answers)

    summary = {
        "runs": {LABELS[key]: str(loaded[key].path) for key in order},
        "data": str(data_dir), "split": dataset.split, "images": [int(m["image_id"]) for m in batch["meta"]],
        "instability": [r.to_dict() for r in results],
        "teacher_query_iou_shown_images": {name: mean_assigned_iou(a) for name, a in answers.items()},
    }
    return DrawnFigures(figures, summary)


def write_figures(drawn: DrawnFigures, out_dir: str | Path = "figures") -> dict[str, Path]:
    """Save ``drawn``'s figures as PNGs and its numbers as figures.json in ``out_dir``;
    returns {file name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {name: save(figure, out_dir / name) for name, figure in drawn.figures.items()}
    (out_dir / SUMMARY).write_text(json.dumps(drawn.summary, indent=2))
    written[SUMMARY] = out_dir / SUMMARY
    return written


def make_adamixer_figures(
    data_dir: str | Path,
    run: str | Path,
    out_dir: str | Path = "figures",
    num_images: int = 3,
    share_images: int = 64,
    split: str | None = None,
) -> dict[str, Path]:
    """Write the AdaMixer figures of a finished AdaMixer run into ``out_dir``; returns {file name: path}.

    ``share_images`` val images give the level plot and the share of each matched query's
    sampling points inside its object's GT box.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_run(run)
    dataset = eval_dataset(data_dir, loaded.config, split)
    written = {}
    batch = load_batch(dataset, pick_images(dataset, num_images))
    sampled = stage_points(loaded.model, batch)
    matches = matched_queries(sampled, batch["labels"], loaded.config.loss)
    figure = plot_active_regions(sampled, batch, matches, dataset.id2label)
    written[FIG2_ADAMIXER] = save(figure, out_dir / FIG2_ADAMIXER)

    many = load_batch(dataset, list(range(min(share_images, len(dataset)))))
    many_sampled = stage_points(loaded.model, many)
    shares = inside_shares(many_sampled, many, matched_queries(many_sampled, many["labels"], loaded.config.loss))
    levels = plot_level_by_box_size(many_sampled, canvas_side=max(many["padded_size"]))
    written[FIG_ADAMIXER_LEVELS] = save(levels, out_dir / FIG_ADAMIXER_LEVELS)
    summary = {
        "run": str(loaded.path), "data": str(data_dir), "split": dataset.split,
        "images": [int(m["image_id"]) for m in batch["meta"]],
        "share_images": len(many["labels"]), "matched_queries": len(shares),
        "points_inside_gt_box_mean": float(np.mean(shares)), "points_inside_gt_box_median": float(np.median(shares)),
    }
    (out_dir / ADAMIXER_SUMMARY).write_text(json.dumps(summary, indent=2))
    written[ADAMIXER_SUMMARY] = out_dir / ADAMIXER_SUMMARY
    return written
