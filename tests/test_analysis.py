"""Analysis: the IS metric, FD's masks, LD pairs, AD's teacher queries, results, figures."""

import json
import math

import numpy as np
import pytest
import torch

from detrdistill.analysis.browser import MASK_KINDS, MaskBrowser
from detrdistill.analysis.draw import load_batch, pick_images
from detrdistill.analysis.figures import DPI, draw_figures
from detrdistill.analysis.instability import (
    assignment_vector,
    instability,
    instability_from_matches,
    stage_changes,
)
from detrdistill.analysis.ld_matching import ld_pairs
from detrdistill.analysis.masks import (
    compute_masks,
    level_masks,
    mask_shares,
    plot_loss_weights,
    select_queries,
    share_in_boxes,
    upsample,
)
from detrdistill.analysis.predictions import detect
from detrdistill.analysis.query_prior import answer_teacher_queries, load_query_map
from detrdistill.analysis.results import ap_rows, ap_table, result_files
from detrdistill.analysis.workspace import one_epoch_config, preset_config, tiny_config
from detrdistill.cli import main as cli_main
from detrdistill.config import FD_MASKS, LossConfig, load_config
from detrdistill.matching import HungarianMatcher
from detrdistill.models.adapters import adapter_for
from detrdistill.runs import eval_dataset, load_run, train_or_reuse


def _matches(*pairs):
    """One image's match from (query, gt) pairs, as HungarianMatcher returns it."""
    queries = torch.tensor([q for q, _ in pairs], dtype=torch.int64)
    gts = torch.tensor([g for _, g in pairs], dtype=torch.int64)
    return queries, gts


# ---------------------------------------------------------------- IS on hand-built matchings


def test_assignment_vector_marks_unmatched_queries_minus_one():
    vector = assignment_vector(*_matches((3, 0), (0, 1)), num_queries=5)
    assert vector.tolist() == [1, -1, -1, 0, -1]
    with pytest.raises(ValueError, match="matched pairs"):
        assignment_vector(torch.tensor([0, 1]), torch.tensor([0]), num_queries=5)


def test_stage_changes_count_predictions_whose_gt_changes():
    assignments = torch.tensor([
        [1, -1, -1, 0, -1],
        [1, -1, -1, 0, -1],  # same as stage 1: IS^1 = 0
        [0, 1, -1, -1, -1],  # queries 0 (1->0), 1 (-1->1), 3 (0->-1): IS^2 = 3
    ])
    assert stage_changes(assignments).tolist() == [0, 3]
    with pytest.raises(ValueError, match="K >= 2"):
        stage_changes(assignments[:1])


def test_instability_from_matches_per_image_and_stage_pair():
    # Image 0: two GTs, the stages of test_stage_changes (IS = 0, 3).
    # Image 1: three GTs. Stage 1 -> 2 swaps GT 0 and 2 between queries 0 and 2 (2 changes);
    # stage 2 -> 3 moves GT 2 from query 0 to query 4, GT 1 from query 1 to 3, GT 0 stays on
    # query 2 (4 changes: queries 0, 1, 3, 4).
    # Image 2: no GT at all: nothing can change.
    empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    stage_1 = [_matches((3, 0), (0, 1)), _matches((0, 0), (1, 1), (2, 2)), empty]
    stage_2 = [_matches((3, 0), (0, 1)), _matches((0, 2), (1, 1), (2, 0)), empty]
    stage_3 = [_matches((0, 0), (1, 1)), _matches((4, 2), (3, 1), (2, 0)), empty]
    counts = instability_from_matches([stage_1, stage_2, stage_3], num_queries=5)
    assert counts.tolist() == [[0, 3], [2, 4], [0, 0]]
    assert counts.float().mean(0).tolist() == pytest.approx([2 / 3, 7 / 3])
    assert instability_from_matches([stage_1, stage_1], num_queries=5).sum() == 0


@pytest.fixture(scope="module")
def shapes_labels(shapes_dir):
    from detrdistill.data.coco import CocoDetection

    return CocoDetection(shapes_dir, "val").id2label


@pytest.fixture(scope="module")
def perturbed_deformable(tiny_detector, shapes_labels):
    """A tiny Deformable DETR on the shapes label set, perturbed so its stages disagree."""
    return tiny_detector("deformable_detr", perturb=0.2, id2label=shapes_labels)


def test_instability_driver_equals_per_stage_hungarian_and_ignores_batch_size(
    perturbed_deformable, shapes_dir, tiny_run_config
):
    config = tiny_run_config("deformable_detr")
    dataset = eval_dataset(shapes_dir, config)
    result = instability(perturbed_deformable, dataset, LossConfig(), batch_size=3, label="tiny")
    assert result.num_images == len(dataset) and result.num_queries == 10
    assert result.pair_names == ["1-2", "2-3"]
    # The same numbers from a single batch, matched stage by stage here.
    batch = load_batch(dataset, list(range(len(dataset))))
    with torch.no_grad():
        record = adapter_for(perturbed_deformable)(batch["pixel_values"], batch["pixel_mask"])
    matcher = HungarianMatcher()
    expected = []
    for image, target in enumerate(batch["labels"]):
        vectors = []
        for k in range(record.num_stages):
            (queries, gts), = matcher(record.logits[k, image:image + 1], record.boxes_cxcywh[k, image:image + 1],
                                      [target])
            owner = dict(zip(queries.tolist(), gts.tolist(), strict=True))
            vectors.append([owner.get(n, -1) for n in range(10)])
        expected.append([sum(a != b for a, b in zip(vectors[k], vectors[k + 1], strict=True)) for k in range(2)])
        # Only queries matched at stage k or k + 1 can change: at most 2 per GT box.
        assert max(expected[-1]) <= 2 * len(target["boxes"])
    assert result.per_image == expected
    assert result.per_pair == pytest.approx(np.mean(expected, axis=0).tolist())
    assert sum(map(sum, expected)) > 0  # a perturbed model is unstable: the test compares real counts


# ---------------------------------------------------------------- FD masks


def _scene():
    """Features [1, D, 8, 8]: an 'object' at rows 1-2, cols 5-6 along query 0; query 1 points
    elsewhere; the right column is padding."""
    dim = 16
    features = 0.1 * torch.randn(1, dim, 8, 8, generator=torch.Generator().manual_seed(0))
    features[0, 0, 1:3, 5:7] = 3.0
    queries = torch.zeros(1, 2, dim)
    queries[0, 0, 0] = 4.0
    queries[0, 1, 1] = 4.0
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, :, 7] = False
    return features, valid, queries


def test_level_masks_normalisation_and_peak_on_the_object():
    features, valid, queries = _scene()
    quality = torch.tensor([[0.8, 0.1]])
    per_query, vanilla, weighted = level_masks(features, valid, queries, quality)
    assert per_query.shape == (1, 2, 8, 8) and vanilla.shape == weighted.shape == (1, 8, 8)
    for mask in (per_query, vanilla, weighted):
        assert (mask >= 0).all() and (mask[..., 7] == 0).all()
    inside = valid[0]
    assert per_query[0, 0][inside].mean().item() == pytest.approx(1.0, rel=1e-5)
    assert vanilla[0][inside].mean().item() == pytest.approx(1.0, rel=1e-5)
    assert weighted[0][inside].mean().item() == pytest.approx(0.9, rel=1e-5)  # mean = sum_i q_i
    torch.testing.assert_close(weighted, 0.8 * per_query[:, 0] + 0.1 * per_query[:, 1])
    peak = np.unravel_index(int(weighted[0].argmax()), (8, 8))
    assert 1 <= peak[0] <= 2 and 5 <= peak[1] <= 6
    # The quality weights put more of the mask on the object than the vanilla mean does.
    share = lambda mask: (mask[0, 1:3, 5:7].sum() / mask[0].sum()).item()  # noqa: E731
    assert share(weighted) > share(vanilla)


def test_share_in_boxes_by_hand():
    uniform = np.ones((4, 4))
    assert share_in_boxes(uniform, np.array([[0, 0, 4, 8]]), (8, 8)) == pytest.approx(0.5)
    assert share_in_boxes(uniform, np.array([[0, 0, 4, 8], [2, 0, 6, 8]]), (8, 8)) == pytest.approx(0.75)
    peaked = np.zeros((4, 4))
    peaked[0, 0] = 1.0
    assert share_in_boxes(peaked, np.array([[0, 0, 4, 4]]), (8, 8)) > 0.9
    assert share_in_boxes(uniform, np.zeros((0, 4)), (8, 8)) == 0.0


def test_compute_masks_on_a_detector(perturbed_deformable, shapes_dir, tiny_run_config):
    dataset = eval_dataset(shapes_dir, tiny_run_config("deformable_detr"))
    batch = load_batch(dataset, [0, 1])
    samples = compute_masks(perturbed_deformable, batch)
    assert len(samples) == 2
    levels = perturbed_deformable.config.num_feature_levels
    for index, sample in enumerate(samples):
        assert sample.image.shape == (64, 64, 3) and 0 <= sample.image.min() <= sample.image.max() <= 1
        assert sample.num_levels == levels and [sample.stride(level) for level in range(levels)] == [16, 32, 64]
        assert [m.shape for m in sample.query_masks] == [(10, 4, 4), (10, 2, 2), (10, 1, 1)]
        for level in range(levels):
            assert sample.query_masks[level].mean(axis=(1, 2)) == pytest.approx(np.ones(10), rel=1e-4)
            assert sample.weighted[level].mean() == pytest.approx(sample.quality.sum(), rel=1e-4)
            # The loss's own weights, against the masks they come from (eq. 8 folded: mean_i q_i psi_i^2).
            weights = sample.loss_weights
            psi = sample.query_masks[level]
            np.testing.assert_allclose(weights["quality"][level], np.mean(sample.quality[:, None, None] * psi**2, 0),
                                       rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(weights["vanilla"][level], sample.vanilla[level] ** 2, rtol=1e-5, atol=1e-7)
            assert weights["release"][level].max() == pytest.approx(1.0, rel=1e-5)  # squared after the max norm
            assert (weights["paper"][level] >= 0).all()
        num_gt = len(batch["labels"][index]["boxes"])
        assert (sample.matched_gt >= 0).sum() == num_gt and len(sample.gt_boxes_xyxy) == num_gt
        assert ((sample.quality >= 0) & (sample.quality <= 1)).all()
        assert (sample.quality[sample.matched_gt < 0] == 0).all()  # unmatched: IoU 0, quality 0
        good, bad = select_queries(sample, num_good=3, num_bad=2)
        assert len(good) == min(3, num_gt) and len({int(sample.matched_gt[q]) for q in good}) == len(good)
        assert len(bad) == 2 and not set(good) & set(bad)
        assert max(sample.quality[bad]) <= min(sample.quality[good])
    shares = mask_shares(samples)
    assert set(shares) == {"vanilla", "quality-weighted", *(f"loss weight, {form}" for form in FD_MASKS)}
    assert len(shares["vanilla"]) == levels
    paper = samples[0].loss_weights["paper"][0]
    share = share_in_boxes(paper, samples[0].gt_boxes_xyxy, (64, 64))
    titles = [ax.get_title() for ax in plot_loss_weights(samples[0]).axes]
    assert f"paper, stride 16\nmean {paper.mean():.3g}, {100 * share:.0f}% in GT" in titles  # the plotted numbers
    assert sum(title.startswith(tuple(FD_MASKS)) for title in titles) == len(FD_MASKS) * levels
    assert all(0 <= v <= 1 for values in shares.values() for v in values)


def test_mask_browser_draws_every_kind_and_builds_its_widget(perturbed_deformable, shapes_dir, tiny_run_config):
    dataset = eval_dataset(shapes_dir, tiny_run_config("deformable_detr"))
    browser = MaskBrowser(perturbed_deformable, dataset, max_images=2)
    for kind in MASK_KINDS:
        figure = browser.figure(image=1, level=2, rank=9, kind=kind)
        assert len(figure.axes) >= 2
    assert browser.query_at(0, 0) == int(np.argmax(browser.masks(0).quality))
    with pytest.raises(ValueError, match="mask kind"):
        browser.figure(kind="nope")
    pytest.importorskip("ipywidgets")
    assert browser.widget() is not None


# ---------------------------------------------------------------- LD pairs and AD's teacher queries


def test_ld_pairs_positives_are_the_teachers_gt_matches(tiny_detector, shapes_dir, shapes_labels, tiny_run_config):
    teacher = tiny_detector("deformable_detr", seed=0, perturb=0.2, id2label=shapes_labels)
    student = tiny_detector("deformable_detr", seed=1, perturb=0.2, id2label=shapes_labels)
    batch = load_batch(eval_dataset(shapes_dir, tiny_run_config("deformable_detr")), [0, 1, 2])
    for item, target in zip(ld_pairs(teacher, student, batch, student_stage=0), batch["labels"], strict=True):
        assert (item.student_stage, item.teacher_stage) == (0, 0)
        assert sorted(item.pairs[:, 0].tolist()) == list(range(10))  # M = N: every teacher query is paired
        assert item.positive.sum() == len(target["boxes"])


def test_teacher_queries_in_their_own_decoder_reproduce_the_teacher(perturbed_deformable, shapes_dir,
                                                                     tiny_run_config):
    teacher = perturbed_deformable
    batch = load_batch(eval_dataset(shapes_dir, tiny_run_config("deformable_detr")), [0, 1])
    answers = answer_teacher_queries(teacher, teacher, batch, load_query_map(None, 64, 64))
    for answer, target in zip(answers, batch["labels"], strict=True):
        np.testing.assert_allclose(answer.boxes_xyxy, answer.teacher_boxes_xyxy, atol=1e-3)
        assert len(answer.assigned_queries) == len(answer.iou) == len(target["boxes"])
    with pytest.raises(FileNotFoundError, match="query map"):
        load_query_map(None, 128, 64)


# ---------------------------------------------------------------- workspace and results


def test_config_helpers(tiny_run_config):
    config = tiny_config("deformable_student", steps=7)
    assert (config.model.d_model, config.model.num_queries, config.train.steps) == (32, 10, 7)
    assert config.model.family == "deformable_detr" and not config.backbone_pretraining.enabled
    epoch = one_epoch_config(config, num_train_images=24, assignment_only=True)
    assert epoch.train.steps == math.ceil(24 / config.data.batch_size) and epoch.train.lr_drop_at == 1.0
    assert epoch.distill.assignment.enabled
    assert not epoch.distill.logits.enabled and not epoch.distill.features.enabled
    full = preset_config("deformable_student", steps=11)
    assert full.train.steps == 11 and full.model.d_model == load_config("deformable_student").model.d_model


def test_ap_rows_find_every_ap_object():
    data = {"AP": 0.5, "rows": {"teacher": {"AP": 0.6, "steps": 3}, "x": {"AP": float("nan")}},
            "list": [{"AP": 0.1}], "flag": {"AP": True}}
    assert sorted(ap_rows(data)) == [".", "list[0]", "rows/teacher", "rows/x"]
    assert ap_table({"suite": data}) == pytest.approx({"suite": 50.0, "suite: rows/teacher": 60.0,
                                                       "suite: list[0]": 10.0})


def test_result_files_skip_per_run_files_of_summarised_suites(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "teacher.json").write_text('{"AP": 0.5}')
    (tmp_path / "main.json").write_text('{"rows": {"a": {"AP": 0.3}}}')
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / "run1.json").write_text('{"AP": 0.2}')
    (tmp_path / "broken.json").write_text("{not json")
    assert sorted(result_files(tmp_path)) == ["main", "presets/teacher"]
    assert result_files(tmp_path / "missing") == {}


def test_pick_images_prefers_two_to_three_readable_objects(shapes_dir, tiny_run_config):
    dataset = eval_dataset(shapes_dir, tiny_run_config("deformable_detr"))
    chosen = pick_images(dataset, 3, min_side=4.0)
    assert len(chosen) == 3 and len(set(chosen)) == 3
    counts = [len(dataset[i][1]["class_labels"]) for i in chosen]
    preferred = sum(2 <= len(dataset[i][1]["class_labels"]) <= 3 for i in range(len(dataset)))
    assert sum(2 <= c <= 3 for c in counts) == min(3, preferred)


# ---------------------------------------------------------------- figures end to end


def _overlay(ax) -> np.ndarray:
    """The heat map ``overlay_mask`` drew over a panel's image: its last image layer."""
    return np.asarray(ax.images[-1].get_array())


def _png_shape(path) -> tuple[int, int]:
    """(height, width) of a PNG, read from its header."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(header[20:24], "big"), int.from_bytes(header[16:20], "big")


def test_figures_command_writes_the_figures_it_draws(shapes_dir, tiny_run_config, tmp_path):
    config = tiny_run_config("deformable_detr", steps=4)
    teacher, student, distilled = tmp_path / "teacher", tmp_path / "student", tmp_path / "distilled"
    train_or_reuse(config, shapes_dir, teacher, progress=False)
    train_or_reuse(config, shapes_dir, student, progress=False)
    train_or_reuse(config, shapes_dir, distilled, teacher=teacher, progress=False)
    out = tmp_path / "figures"
    code = cli_main(["figures", "--data", str(shapes_dir), "--teacher", str(teacher), "--student", str(student),
                     "--distilled", str(distilled), "--epoch-run", str(tmp_path / "epoch"), "--ad-run",
                     str(tmp_path / "ad"), "--out", str(out), "--images", "2", "--is-images", "4"])
    assert code == 0
    summary = json.loads((out / "figures.json").read_text())
    labels = [entry["label"] for entry in summary["instability"]]
    assert labels == ["teacher", "student", "student, 1 epoch", "student, 1 epoch + AD", "DETRDistill student"]
    assert all(entry["num_images"] == 4 and len(entry["per_pair"]) == 2 for entry in summary["instability"])
    # The one-epoch runs: one pass over the 24 training images, AD only for the distilled one.
    ad = load_run(tmp_path / "ad")
    assert ad.eval["steps"] == math.ceil(24 / config.data.batch_size)
    assert ad.config.distill.assignment.enabled and not ad.config.distill.logits.enabled
    assert ad.config.distill.teacher is not None and load_run(tmp_path / "epoch").config.distill.teacher is None

    # The same runs drawn again (the one-epoch runs are finished now): what each figure plots.
    drawn = draw_figures(shapes_dir, teacher, student, distilled, tmp_path / "epoch", tmp_path / "ad",
                         num_images=2, is_images=4, progress=False)
    assert drawn.summary == summary
    assert sorted(drawn.figures) == sorted({"fig4_query_masks.png", "fig6_quality_masks.png", "fig7_instability.png",
                                            "fig_predictions.png", "fig_ld_pairs.png", "fig_teacher_queries.png",
                                            "fig_fd_loss_weights.png"})
    for name, figure in drawn.figures.items():  # each file is its figure, at the figures' DPI
        width, height = figure.get_size_inches() * DPI
        assert _png_shape(out / name) == (round(height), round(width)), name

    dataset = eval_dataset(shapes_dir, load_run(teacher).config)
    batch = load_batch(dataset, pick_images(dataset, 2))
    teacher_run = load_run(teacher)
    fd_config = load_run(distilled).config.distill.features
    masks = compute_masks(teacher_run.model, batch, teacher_run.config.loss, fd_config)
    size = masks[0].image.shape[:2]

    def scaled(mask):  # as overlay_mask scales it: to its own maximum (an all-zero mask stays zero)
        heat = upsample(mask, size)
        return heat / max(float(heat.max()), 1e-12)

    # Fig. 4: row = image, columns after the first = the selected queries' psi_i, in order.
    fig4 = drawn.figures["fig4_query_masks.png"].axes
    columns = len(fig4) // 2
    for row, sample in enumerate(masks):
        good, bad = select_queries(sample)
        for col, query in enumerate(good + bad, start=1):
            np.testing.assert_allclose(_overlay(fig4[row * columns + col]), scaled(sample.query_masks[0][query]),
                                       rtol=1e-5, atol=1e-6)
    # FD's loss weights: row = mask form, column = level, each FD's own per-pixel weight.
    weights = drawn.figures["fig_fd_loss_weights.png"].axes
    levels = masks[0].num_levels
    for row, form in enumerate(FD_MASKS):
        for level in range(levels):
            np.testing.assert_allclose(_overlay(weights[row * (1 + levels) + 1 + level]),
                                       scaled(masks[0].loss_weights[form][level]), rtol=1e-5, atol=1e-6)
    # Fig. 7: one bar series per model, its heights the IS per stage pair of figures.json.
    bars = drawn.figures["fig7_instability.png"].axes[0].containers
    assert [list(b.datavalues) for b in bars] == [entry["per_pair"] for entry in summary["instability"]]
    # Detections: per panel one dashed box per GT and one box per detection kept.
    panels = drawn.figures["fig_predictions.png"].axes
    for row, key in enumerate((teacher, student, distilled)):
        for col, found in enumerate(detect(load_run(key).model, batch)):
            patches = panels[row * 2 + col].patches
            assert len(patches) == len(batch["labels"][col]["boxes"]) + len(found.boxes_xyxy)


def test_figures_command_writes_the_adamixer_figures_alone(shapes_dir, tmp_path):
    run = tmp_path / "adamixer"
    train_or_reuse(tiny_config("adamixer_teacher", steps=4), shapes_dir, run, progress=False)
    out = tmp_path / "figures"
    assert cli_main(["figures", "--data", str(shapes_dir), "--adamixer", str(run), "--out", str(out),
                     "--images", "2"]) == 0
    assert _png_shape(out / "fig2_adamixer_points.png")[0] > 100
    # A 4-step model has no confident query: the level plot says so rather than failing.
    assert (out / "fig_adamixer_levels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "figures.json").exists()  # the DETRDistill figures need --teacher and --student
    summary = json.loads((out / "figures_adamixer.json").read_text())
    assert summary["run"] == str(run) and summary["share_images"] == 8  # the whole tiny val split
    assert summary["matched_queries"] > 0 and 0.0 <= summary["points_inside_gt_box_mean"] <= 1.0


def test_figures_command_needs_a_teacher_and_student_or_an_adamixer_run(shapes_dir, tmp_path, capsys):
    assert cli_main(["figures", "--data", str(shapes_dir), "--teacher", str(tmp_path)]) == 2
    assert "give --teacher and --student" in capsys.readouterr().err
