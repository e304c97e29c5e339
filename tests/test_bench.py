"""The benchmark machinery: overrides, the paired bootstrap, suite definitions, a tiny suite end to end."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from detrdistill import runs as runs_module
from detrdistill.bench import runner
from detrdistill.bench.bootstrap import ap_table, paired_gain, resample_counts, resampled_aps, weighted_ap
from detrdistill.bench.plan import make_plan, planned_runs, same_time_steps, suite_command
from detrdistill.bench.plot import draw_summary
from detrdistill.bench.runner import config_digest, run_suite
from detrdistill.bench.suites import (
    DETRDISTILL,
    FAMILY_PRESETS,
    SUITES,
    FamilyPresets,
    Suite,
    Target,
    Variant,
    check_suite,
    kd,
    preset_exists,
    suite_families,
)
from detrdistill.bench.summary import MixedTeachersError, check_target, checkpoints_over_seeds
from detrdistill.config import ConfigError, DistillConfig, RunConfig, config_to_dict, load_config
from detrdistill.evaluate import evaluate_coco
from detrdistill.overrides import apply_overrides
from tests.conftest import make_tiny_run_config

# ---------------------------------------------------------------- overrides


def test_overrides_set_nested_fields_and_leave_the_input_alone():
    config = RunConfig()
    changed = apply_overrides(config, {"distill.logits.pos_cls": False, "train.steps": 5, "train.minutes": None,
                                       "model.backbone.hidden_sizes": (8, 16, 32, 64), "train.lr": 1})
    assert changed.distill.logits.pos_cls is False and changed.train.steps == 5
    assert changed.model.backbone.hidden_sizes == [8, 16, 32, 64]  # a list, so it saves as YAML
    assert changed.train.lr == 1
    assert config.distill.logits.pos_cls is True and config.train.steps == RunConfig().train.steps


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"distill.logits.pos_clss": False}, "unknown key 'distill.logits.pos_clss': distill.logits has no field "
                                             "'pos_clss'"),
        ({"distil.logits.pos_cls": False}, "the run config has no field 'distil'"),
        ({"distill.logits": False}, "names a section, not a field"),
        ({"train.steps.count": 3}, "train.steps is a value, not a section"),
        ({"train.steps": "100"}, "train.steps must be int | None, got str '100'"),
        ({"train.steps": True}, "train.steps must be int"),
        ({"distill.logits.pos_cls": 1}, "distill.logits.pos_cls must be bool"),
    ],
)
def test_overrides_reject_unknown_keys_and_wrong_types_with_the_key_named(overrides, message):
    with pytest.raises(ConfigError, match="suite x, row y") as error:
        apply_overrides(RunConfig(), overrides, where="suite x, row y")
    assert message in str(error.value)
    if "unknown key" in message:
        assert "pos_cls" in str(error.value)  # the known fields are listed


def test_overrides_go_through_the_configs_own_validation():
    with pytest.raises(ConfigError, match="mixed_precision"):
        apply_overrides(RunConfig(), {"train.mixed_precision": "int4"})


# ---------------------------------------------------------------- paired bootstrap


def _ground_truth(boxes_per_image):
    """COCO ground truth: image i (id i + 1, 100 x 100) holds the given (category, [x, y, w, h]) boxes."""
    images = [{"id": i + 1, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in range(len(boxes_per_image))]
    annotations = [{"image_id": i + 1, "category_id": category, "bbox": box}
                   for i, boxes in enumerate(boxes_per_image) for category, box in boxes]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]}


def _random_scene(seed=0, num_images=12):
    """Ground truth and noisy predictions (shifted boxes, some wrong classes, distinct random scores)."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(num_images):
        boxes.append([(int(rng.integers(1, 4)), [*rng.uniform(0, 60, 2).tolist(), *rng.uniform(10, 40, 2).tolist()])
                      for _ in range(rng.integers(1, 4))])
    results = []
    for i, image_boxes in enumerate(boxes):
        for category, (x, y, w, h) in image_boxes:
            for _ in range(2):
                wrong = rng.random() < 0.3
                results.append({"image_id": i + 1, "category_id": int(rng.integers(1, 4)) if wrong else category,
                                "bbox": [x + rng.normal(0, 4), y + rng.normal(0, 4), w, h],
                                "score": float(rng.random())})
    return _ground_truth(boxes), results


def test_ap_table_reproduces_pycocotools_ap_on_the_full_split():
    ground_truth, results = _random_scene()
    assert ap_table(ground_truth, results).ap() == pytest.approx(evaluate_coco(ground_truth, results)["AP"], abs=1e-12)


def test_weighted_ap_equals_pycocotools_on_a_dataset_of_copied_images():
    """A resample (image i drawn c_i times) scored by weights = COCOeval on the images copied c_i times."""
    ground_truth, results = _random_scene(seed=1)
    counts = np.array([2, 0, 1, 3, 0, 1, 1, 2, 0, 1, 4, 1])
    images, annotations, copied_results, next_id = [], [], [], 100
    for image, count in zip(ground_truth["images"], counts, strict=True):
        for _ in range(count):
            next_id += 1
            images.append({**image, "id": next_id})
            annotations += [{**a, "image_id": next_id} for a in ground_truth["annotations"]
                            if a["image_id"] == image["id"]]
            copied_results += [{**r, "image_id": next_id} for r in results if r["image_id"] == image["id"]]
    copied = {**ground_truth, "images": images, "annotations": annotations}
    expected = evaluate_coco(copied, copied_results)["AP"]
    assert 0.05 < expected < 0.95  # a non-trivial AP, so agreement means something
    assert weighted_ap(ap_table(ground_truth, results), counts.astype(float)) == pytest.approx(expected, abs=1e-12)


def test_batched_resampled_aps_equal_weighted_ap_row_by_row():
    ground_truth, results = _random_scene(seed=5, num_images=40)
    table = ap_table(ground_truth, results)
    counts = resample_counts(40, 60, seed=1)
    expected = [weighted_ap(table, row) for row in counts]
    assert resampled_aps(table, counts) == pytest.approx(expected, abs=1e-12)
    assert np.ptp(expected) > 0.01  # resamples really differ


def test_hand_computed_ap_one_hit_one_false_positive_one_miss():
    """2 boxes, detections: an exact hit (0.9), a false positive (0.8). Recall reaches 0.5 at
    precision 1, so 51 of COCO's 101 recall thresholds (0, 0.01, ..., 0.5) score 1: AP = 51/101."""
    ground_truth = _ground_truth([[(1, [10, 10, 20, 20]), (1, [60, 60, 30, 30])]])
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [40, 5, 10, 10], "score": 0.8}]
    assert ap_table(ground_truth, results).ap() == pytest.approx(51 / 101, abs=1e-12)


def _perfect_and_empty():
    boxes = [[(1 + i % 3, [5.0 + i, 10, 30, 20]), (1 + (i + 1) % 3, [50, 40 + i, 25, 35])] for i in range(10)]
    ground_truth = _ground_truth(boxes)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in ground_truth["annotations"]]
    return ground_truth, perfect


def test_bootstrap_of_identical_predictions_is_a_zero_gain_with_a_zero_width_interval():
    ground_truth, results = _random_scene(seed=2)
    table = ap_table(ground_truth, results)
    counts = resample_counts(len(table.image_ids), 200, seed=0)
    interval = paired_gain([table, table], [table, table], counts)
    assert (interval.gain, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert interval.resamples == 200 and interval.seeds == 2


def test_bootstrap_of_perfect_against_empty_predictions_is_a_gain_of_one_on_every_resample():
    ground_truth, perfect = _perfect_and_empty()
    perfect_table, empty_table = ap_table(ground_truth, perfect), ap_table(ground_truth, [])
    assert perfect_table.ap() == 1.0 and empty_table.ap() == 0.0
    counts = resample_counts(len(perfect_table.image_ids), 100, seed=3)
    interval = paired_gain([perfect_table], [empty_table], counts)
    assert (interval.gain, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_bootstrap_interval_brackets_the_gain_and_pools_seeds():
    ground_truth, results = _random_scene(seed=4, num_images=30)
    _, perfect = _perfect_and_empty()
    noisy = ap_table(ground_truth, results)
    half = ap_table(ground_truth, results[: len(results) // 2])
    counts = resample_counts(len(noisy.image_ids), 300, seed=0)
    interval = paired_gain([noisy, noisy], [half, noisy], counts)
    assert interval.gain == pytest.approx((noisy.ap() - half.ap()) / 2, abs=1e-12)
    assert interval.low < interval.gain < interval.high


def test_resample_counts_draw_each_resample_with_replacement():
    counts = resample_counts(50, 40, seed=0)
    assert counts.shape == (40, 50) and (counts.sum(axis=1) == 50).all()
    assert (counts == 0).any() and (counts > 1).any()
    assert np.array_equal(counts, resample_counts(50, 40, seed=0))


# ---------------------------------------------------------------- suites


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_is_consistent_and_its_rows_apply_to_its_presets(name):
    suite = SUITES[name]
    check_suite(suite)
    has_baselines = hasattr(DistillConfig(), "baseline")
    adamixer = [f for f in ("adamixer",) if preset_exists(FAMILY_PRESETS[f].student)]  # landing in parallel
    for family in ["deformable_detr", "conditional_detr", *adamixer]:
        student = load_config(FAMILY_PRESETS[family].student)
        for variant in suite.variants:
            if not has_baselines and any(k.startswith("distill.baseline.") for k in variant.overrides):
                continue  # the comparison baselines land with distill.baseline (issue 4, first part)
            config = apply_overrides(student, variant.overrides, where=f"{name}/{variant.key}")
            if variant.distilled and variant.key != "fgfi":
                assert config.distill.logits.enabled or config.distill.features.enabled or \
                    config.distill.assignment.enabled or config.distill.baseline.method != "none"
    assert suite.selected_variants(quick=True), "every suite needs a --quick subset"


def test_check_suite_refuses_rows_that_name_missing_rows():
    base = SUITES["progressive"]
    broken = Suite(**{**base.__dict__, "targets": (Target("x", ("progressive",), ("nope",)),)})
    with pytest.raises(ConfigError, match="names unknown rows \\['nope'\\]"):
        check_suite(broken)
    broken = Suite(**{**base.__dict__, "reference": "missing"})
    with pytest.raises(ConfigError, match="reference 'missing' is not a variant"):
        check_suite(broken)


def test_suites_run_their_own_families_unless_others_are_requested(tmp_path):
    (tmp_path / "t.yaml").write_text("{}\n")
    (tmp_path / "s.yaml").write_text("{}\n")
    missing = {**FAMILY_PRESETS, "adamixer": FamilyPresets("no_such_teacher_preset", "no_such_student_preset")}
    present = {**FAMILY_PRESETS, "adamixer": FamilyPresets(str(tmp_path / "t.yaml"), str(tmp_path / "s.yaml"))}
    assert suite_families(SUITES["main"], presets=present) == ["deformable_detr", "conditional_detr"]
    assert suite_families(SUITES["main"], quick=True, presets=present) == ["deformable_detr"]
    assert suite_families(SUITES["components"], presets=present) == ["deformable_detr"]
    assert suite_families(SUITES["components"], ["adamixer", "adamixer"], presets=present) == ["adamixer"]
    assert suite_families(SUITES["components"], ["conditional_detr"], presets=present) == ["conditional_detr"]
    with pytest.raises(ConfigError, match="not found"):
        suite_families(SUITES["components"], ["adamixer"], presets=missing)
    with pytest.raises(ConfigError, match="unknown family 'yolo'"):
        suite_families(SUITES["components"], ["yolo"], presets=present)


def _fake_teacher(path: Path, weights: bytes = b"weights") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_config_digest_ignores_the_seed_and_an_undistilled_runs_distill_section(tmp_path):
    teacher = _fake_teacher(tmp_path)
    config = make_tiny_run_config(steps=4)
    other_seed = apply_overrides(config, {"train.seed": 3})
    no_ld = apply_overrides(config, {"distill.logits.enabled": False})
    assert config_digest(config, None) == config_digest(other_seed, None) == config_digest(no_ld, None)
    assert config_digest(config, teacher) != config_digest(no_ld, teacher)
    assert config_digest(config, None) != config_digest(apply_overrides(config, {"train.steps": 5}), None)
    assert config_digest(config, None) == config_digest(apply_overrides(config, {"data.cache_mb": 0}), None)
    diagnosed = apply_overrides(config, {"train.grad_diagnostic_every": 10})  # only adds records
    assert config_digest(diagnosed, teacher) == config_digest(config, teacher)
    assert config_digest(apply_overrides(config, {"distill.features.temperature": 0.5}), teacher) != \
        config_digest(config, teacher)


def test_config_digest_follows_the_teachers_weights_not_its_directory(tmp_path):
    config = make_tiny_run_config(steps=4)
    same = [_fake_teacher(tmp_path / name) for name in ("a", "b")]
    assert config_digest(config, same[0]) == config_digest(config, same[1])
    retrained = config_digest(config, _fake_teacher(tmp_path / "a", b"other weights"))
    assert retrained != config_digest(config, same[1])
    with pytest.raises(FileNotFoundError, match="no model weights"):
        config_digest(config, tmp_path / "empty")


def test_bench_settings_apply_to_every_row_under_its_own_overrides_and_name_the_page(tmp_path):
    presets = _tiny_presets(tmp_path)
    settings = {"distill.features.mask": "paper", "distill.features.temperature": 0.5}
    plan = make_plan(TINY, ["conditional_detr"], 1, False, tmp_path, tmp_path, tmp_path,
                     {"conditional_detr": tmp_path / "teacher"}, "cmd", presets, settings=settings)
    runs = {run.variant.key: run.config for run in planned_runs(plan)}
    assert runs["all"].distill.features.mask == runs["ld"].distill.features.mask == "paper"
    assert runs["all"].distill.features.temperature == 0.5
    assert not runs["ld"].distill.features.enabled  # the row's own override still holds
    assert plan.result_name == "tiny_set-distill.features.mask=paper_set-distill.features.temperature=0.5"
    command = suite_command("tiny", 1, False, tmp_path, tmp_path, None, Path("runs/presets"),
                            Path("benchmarks/results"), None, settings)
    assert command.endswith("--set distill.features.mask=paper --set distill.features.temperature=0.5")
    with pytest.raises(ConfigError, match=r"--set \['train.steps'\]: a suite sets"):
        make_plan(TINY, ["conditional_detr"], 1, False, tmp_path, tmp_path, tmp_path, {}, "cmd", presets,
                  settings={"train.steps": 9})
    with pytest.raises(ConfigError, match="nope"):
        planned_runs(make_plan(TINY, ["conditional_detr"], 1, False, tmp_path, tmp_path, tmp_path,
                               {"conditional_detr": tmp_path}, "cmd", presets, settings={"distill.nope": 1}))


def test_same_time_steps_fill_the_distilled_runs_training_time():
    assert same_time_steps(500, 240.0, 120.0) == 1000
    assert same_time_steps(1, 10.0, 120.0) == 1


def _record(seed, ap):
    return {"seed": seed, "eval": {"AP": ap}}


def test_targets_are_met_or_not_met_with_the_numbers():
    rows = {"student": [_record(0, 0.20), _record(1, 0.22), _record(2, 0.21)],
            "kd": [_record(0, 0.25), _record(1, 0.26), _record(2, 0.255)],
            "noisy": [_record(0, 0.20), _record(1, 0.30), _record(2, 0.25)]}
    labels = {"student": "student", "kd": "KD", "noisy": "noisy", "absent": "absent"}
    gain = Target("KD - student >= +2.5 AP and > 2 std", ("kd",), ("student",), min_gain=0.025, std_multiple=2)
    met = check_target(gain, rows, labels)
    assert met["met"] and "KD - student = +4.5 AP" in met["detail"]
    # noisy - student = +4.0 AP, but the per-seed gains (0, 8, 4) have std 4.0: not above 2 std.
    assert not check_target(Target("t", ("noisy",), ("student",), 0.025, 2), rows, labels)["met"]
    assert not check_target(Target("t", ("student",), ("kd",)), rows, labels)["met"]
    missing = check_target(Target("t", ("absent",), ("student",)), rows, labels)
    assert missing["met"] is None and "rows not run: absent" in missing["detail"]
    one_seed = {"student": rows["student"][:1], "kd": rows["kd"][:1]}
    assert not check_target(gain, one_seed, labels)["met"]


# ---------------------------------------------------------------- a tiny suite end to end


def _tiny_presets(tmp_path):
    paths = {}
    for role, steps in (("teacher", 3), ("student", 3)):
        paths[role] = tmp_path / f"tiny_{role}.yaml"
        paths[role].write_text(yaml.safe_dump(config_to_dict(make_tiny_run_config("conditional_detr", steps=steps))))
    return {"conditional_detr": FamilyPresets(str(paths["teacher"]), str(paths["student"]))}


TINY = Suite(
    name="tiny",
    title="a tiny suite",
    paper_source="made-up numbers",
    variants=(
        Variant("student", "student", distilled=False, baseline=None, paper={"*": 40.0}, quick=True),
        Variant("all", "DETRDistill", DETRDISTILL, paper={"*": 42.5}, quick=True),
        Variant("ld", "LD", kd(ld=True)),
    ),
    reference="all",
    steps={"*": 4},
    quick_steps={"*": 2},
    families=("conditional_detr",),
    checkpoints=2,
    eval_max_images=4,
    show_teacher=True,
    paper_teacher={"*": 45.0},
    targets=(Target("LD at least 100 AP above DETRDistill", ("ld",), ("all",), min_gain=1.0),),
    budget="4 steps",
)


def test_tiny_suite_end_to_end_then_resumes_without_redoing_finished_runs(shapes_dir, tmp_path, monkeypatch):
    presets = _tiny_presets(tmp_path)
    runs, results, teachers = tmp_path / "runs", tmp_path / "results", tmp_path / "teachers"
    kwargs = dict(seeds=2, teachers=teachers, presets=presets, progress=False, resamples=50)
    report = run_suite(TINY, shapes_dir, runs, results, **kwargs)

    assert (teachers / "tiny_teacher" / "eval.json").is_file()
    files = sorted(p.name for p in (results / "tiny").glob("*.json"))
    assert files == sorted(f"conditional_detr__{key}__seed{seed}.json"
                           for key in ("student", "all", "ld", "student_same_time") for seed in (0, 1))
    record = lambda key, seed: json.loads((results / "tiny" / f"conditional_detr__{key}__seed{seed}.json").read_text())  # noqa: E731
    student, distilled, same_time = record("student", 1), record("all", 1), record("student_same_time", 1)
    assert student["steps"] == distilled["steps"] == 4 and student["seed"] == 1
    assert not student["distilled"] and distilled["distilled"]
    assert distilled["teacher"] == str(teachers / "tiny_teacher")
    assert distilled["teacher_digest"] == runs_module.model_digest(teachers / "tiny_teacher")
    assert distilled["teacher_eval"] == json.loads((teachers / "tiny_teacher" / "eval.json").read_text())
    assert student["teacher_digest"] is None
    assert distilled["overrides"]["distill.assignment.enabled"] is True and distilled["overrides"]["train.steps"] == 4
    timing = same_time["equal_time_timing"]
    assert timing["reference_ms"] > timing["baseline_ms"] > 0  # a distill step adds the teacher's forward
    assert same_time["steps"] == same_time_steps(distilled["steps"], timing["reference_ms"], timing["baseline_ms"])
    assert [c["step"] for c in student["checkpoints"]] == [2, 4]  # eval every 4 // 2 steps
    assert all(c["num_images"] == 4 for c in student["checkpoints"])
    assert student["eval"]["num_images"] == 8
    for r in (student, distilled, same_time):
        assert r["ap_from_predictions"] == pytest.approx(r["eval"]["AP"], abs=1e-9)
        assert Path(r["predictions"]).is_file() and Path(r["run_dir"], "val_ap_table.npz").is_file()
    assert "detrdistill bench tiny --seeds 2" in student["command"]
    assert student["run_command"].startswith("detrdistill train --config ")

    text = report.read_text()
    assert report == results / "tiny.md"
    assert text.startswith("# Benchmark `tiny`")
    assert "Regenerate: `detrdistill bench tiny --seeds 2 --data " in text
    assert f"1 run, weights {distilled['teacher_digest']})" in text and "| DETRDistill | " in text and "| LD | " in text
    assert "student, same time as DETRDistill" in text
    assert "42.5 (+2.5)" in text  # the paper column with its gain over the paper's student
    assert "**NOT MET** (issue 4), conditional_detr: LD at least 100 AP above DETRDistill" in text
    assert "Equal wall-clock time: DETRDistill - student, same time as DETRDistill = " in text
    assert (results / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((results / "tiny.json").read_text())
    rows = {row["key"]: row for row in summary["families"]["conditional_detr"]["rows"]}
    assert rows["all"]["seeds"] == [0, 1] and rows["all"]["gain"]["resamples"] == 50
    assert rows["all"]["gain"]["low"] <= rows["all"]["gain"]["gain"] <= rows["all"]["gain"]["high"]
    expected_gain = np.mean([record("all", s)["eval"]["AP"] - record("student", s)["eval"]["AP"] for s in (0, 1)])
    assert rows["all"]["gain"]["gain"] == pytest.approx(expected_gain, abs=1e-12)

    calls = []
    real_run_training = runs_module.run_training

    def counting_run_training(*args, **kw):
        calls.append(kw.get("resume"))
        return real_run_training(*args, **kw)

    monkeypatch.setattr(runs_module, "run_training", counting_run_training)
    run_suite(TINY, shapes_dir, runs, results, **kwargs)
    assert calls == []  # every run finished: nothing retrained

    interrupted = runs / "conditional_detr"
    (next(interrupted.glob("ld-*")) / "seed1" / "eval.json").unlink()  # its checkpoint stays
    run_suite(TINY, shapes_dir, runs, results, **kwargs)
    assert calls == [True]  # only the interrupted run, resumed from its checkpoint
    assert record("ld", 1)["steps"] == 4

    # A subset of rows reuses the same run directories and reports on a page of its own; the
    # equal-time student only when listed.
    subset = run_suite(TINY, shapes_dir, runs, results, families=["conditional_detr"], rows=["student", "all"],
                       **kwargs)
    assert calls == [True]
    assert subset == results / "tiny_conditional_detr_student-all.md" and (results / "tiny.md").is_file()
    subset_text = subset.read_text()
    assert "--families conditional_detr --rows student all" in subset_text
    assert "| DETRDistill | " in subset_text and "| LD | " not in subset_text
    assert "same time as DETRDistill" not in subset_text
    with_same_time = run_suite(TINY, shapes_dir, runs, results, rows=["student", "all", "student_same_time"],
                               **kwargs)
    assert calls == [True] and "student, same time as DETRDistill" in with_same_time.read_text()
    with pytest.raises(ConfigError, match=r"--rows \['fitnet'\]: not rows of suite tiny"):
        run_suite(TINY, shapes_dir, runs, results, rows=["fitnet"], **kwargs)
    with pytest.raises(ConfigError, match="list both"):
        run_suite(TINY, shapes_dir, runs, results, rows=["all", "student_same_time"], **kwargs)

    # A page never mixes teachers: records of two teachers, or of another teacher than the one
    # now in the teacher directory, are refused, even when rebuilding from the records alone.
    text_before = report.read_text()
    stale = results / "tiny" / "conditional_detr__ld__seed0.json"
    stale.write_text(json.dumps({**record("ld", 0), "teacher_digest": "0123456789ab"}))
    with pytest.raises(MixedTeachersError, match="ld seed 0"):
        run_suite(TINY, shapes_dir, runs, results, report_only=True, **kwargs)
    for seed in (0, 1):
        for key in ("all", "ld"):
            path = results / "tiny" / f"conditional_detr__{key}__seed{seed}.json"
            path.write_text(json.dumps({**record(key, seed), "teacher_digest": "0123456789ab"}))
    with pytest.raises(MixedTeachersError, match="the teacher in .* is "):
        run_suite(TINY, shapes_dir, runs, results, report_only=True, **kwargs)
    assert report.read_text() == text_before


def test_cli_bench_parses_the_suite_options_and_runs_cost_through_the_cost_script(monkeypatch, tmp_path):
    from detrdistill import cli

    args = cli.build_parser().parse_args(["bench", "components", "--quick", "--families", "conditional_detr",
                                          "adamixer", "--runs", str(tmp_path)])
    assert (args.suite, args.quick, args.families, args.runs) == (
        "components", True, ["conditional_detr", "adamixer"], tmp_path)
    assert args.func is cli.cmd_bench
    seeds_run, settings_run = [], []
    monkeypatch.setattr(runner, "run_suite", lambda *a, seeds, settings, **k: (seeds_run.append(seeds),
                                                                              settings_run.append(settings)))
    for extra in ([], ["--quick"], ["--quick", "--seeds", "2"]):
        assert cli.main(["bench", "main", "--data", str(tmp_path), *extra]) == 0
    assert seeds_run == [3, 1, 2], "--quick is one seed unless --seeds says otherwise"
    assert cli.main(["bench", "main", "--data", str(tmp_path), "--set", "distill.features.mask=paper",
                     "--set", "distill.features.temperature=0.5"]) == 0
    assert settings_run == [{}, {}, {}, {"distill.features.mask": "paper", "distill.features.temperature": 0.5}]
    commands = []
    monkeypatch.setattr(cli.subprocess, "run", lambda command, check: commands.append(command))
    assert cli.main(["bench", "cost", "--data", str(tmp_path)]) == 0
    assert commands and commands[0][1] == str(runner.COST_SCRIPT) and commands[0][2:] == ["--data", str(tmp_path)]
    assert runner.COST_SCRIPT.name == "cost.py"


def test_checkpoints_leave_out_the_final_evaluation_and_a_copy_left_by_an_interruption(tmp_path):
    lines = [{"step": 1, "loss": 3.0}, {"step": 2, "elapsed_s": 1.0, "eval": {"AP": 0.1, "num_images": 4}},
             {"step": 4, "elapsed_s": 2.0, "eval": {"AP": 0.2, "num_images": 4}},
             {"step": 4, "elapsed_s": 2.0, "eval": {"AP": 0.25, "num_images": 8}},  # written, then interrupted
             {"step": 4, "elapsed_s": 2.0, "eval": {"AP": 0.25, "num_images": 8}}]  # the resumed run's final
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert runner.read_checkpoints(tmp_path) == [{"step": 2, "elapsed_s": 1.0, "AP": 0.1, "num_images": 4},
                                                 {"step": 4, "elapsed_s": 2.0, "AP": 0.2, "num_images": 4}]


def test_checkpoint_curves_average_ap_take_the_median_time_and_drop_steps_a_seed_missed():
    runs = [{"checkpoints": [{"step": 2, "AP": 0.1, "elapsed_s": 10.0}, {"step": 4, "AP": 0.3, "elapsed_s": 20.0}]},
            {"checkpoints": [{"step": 2, "AP": 0.2, "elapsed_s": 12.0}]},
            # shared the cores with other work: its time would pull a mean to 40 s
            {"checkpoints": [{"step": 2, "AP": 0.3, "elapsed_s": 98.0}]}]
    assert checkpoints_over_seeds(runs) == [{"step": 2, "AP": pytest.approx(0.2), "elapsed_s": 12.0, "seeds": 3}]


# TINY's budget, checkpoints and teacher, with the converged suite's rows and mechanisms.
TINY_CONVERGED = dataclasses.replace(
    TINY,
    name="tinyconverged",
    title="a tiny converged suite",
    variants=(
        Variant("student", "student, S", distilled=False, baseline=None, quick=True),
        Variant("student_2x", "student, 2S", distilled=False, baseline="student", quick=True, steps_factor=2),
        Variant("all", "DETRDistill, S", DETRDISTILL, baseline="student_2x", quick=True),
        Variant("fgd", "FGD, S", kd(**{"distill.baseline.method": "fgd"}), baseline="student_2x",
                families=("deformable_detr",)),
    ),
    teacher_steps={"*": 6},
    teacher_suffix="_converged",
    equal_time=False,
    keep_ap_tables=True,
    interleaved_times=True,
    targets=(
        Target("plateau", ("student_2x",), ("student",), max_gain=1.0),
        Target("gain with interval", ("all",), ("student_2x",), min_gain=-1.0, interval=True),
        Target("near the teacher", ("all",), ("teacher",), min_gain=-1.0),
        Target("beats FGD", ("all",), ("fgd",)),
        Target("only on deformable", ("all",), ("student",), families=("deformable_detr",)),
    ),
)


def test_converged_suite_rows_teacher_targets_and_reuse_from_records_alone(shapes_dir, tmp_path, monkeypatch):
    presets = _tiny_presets(tmp_path)
    runs, results, teachers = tmp_path / "runs", tmp_path / "results", tmp_path / "teachers"
    kwargs = dict(seeds=2, teachers=teachers, presets=presets, progress=False, resamples=50)
    report = run_suite(TINY_CONVERGED, shapes_dir, runs, results, **kwargs)

    teacher = teachers / "tiny_teacher_converged"
    assert json.loads((teacher / "eval.json").read_text())["steps"] == 6  # the suite's teacher steps, not 3
    page = results / "tinyconverged"
    names = sorted(p.name for p in page.iterdir())
    # No equal-time row, no FGD row outside its family; each record with its AP table beside it.
    assert names == sorted([f"conditional_detr__{key}__seed{seed}.{ext}" for key in ("student", "student_2x", "all")
                            for seed in (0, 1) for ext in ("json", "ap.npz")] + ["step_ms_conditional_detr.json"])
    record = lambda key, seed: json.loads((page / f"conditional_detr__{key}__seed{seed}.json").read_text())  # noqa: E731
    assert record("student", 0)["steps"] == 4 and record("student_2x", 0)["steps"] == 8
    assert [c["step"] for c in record("student_2x", 0)["checkpoints"]] == [2, 4, 6, 8]  # at the suite's interval
    assert record("all", 1)["config_digest"] == Path(record("all", 1)["run_dir"]).parent.name.split("-")[-1]

    text = report.read_text()
    assert "conditional_detr: plateau. student, 2S - student, S = " in text
    assert "conditional_detr: gain with interval. DETRDistill, S - student, 2S = " in text and "95% interval [" in text
    assert "conditional_detr: near the teacher. DETRDistill, S - teacher = " in text
    assert "**MET** (issue 4), conditional_detr: near the teacher" in text  # AP - teacher AP >= -1 always
    assert "**NOT CHECKED** (issue 4), conditional_detr: beats FGD. rows not run: FGD, S" in text
    assert "only on deformable" not in text
    summary = json.loads((results / "tinyconverged.json").read_text())
    rows = {row["key"]: row for row in summary["families"]["conditional_detr"]["rows"]}
    assert rows["all"]["baseline"] == "student_2x" and rows["all"]["gain"]["low"] is not None
    # The page's figure plots these numbers: bars of the mean AP, curves of the checkpoints by step and by time.
    bars, by_step, by_time = draw_summary(summary).axes[:3]
    teacher_ap = summary["families"]["conditional_detr"]["teacher"]["eval"]["AP"]
    assert [b.get_height() for b in bars.patches] == pytest.approx(
        [100 * teacher_ap] + [100 * rows[k]["mean"]["AP"] for k in ("student", "student_2x", "all")])
    # Training time is steps x each row's step time measured interleaved in one process, kept beside the page.
    timing = json.loads((page / "step_ms_conditional_detr.json").read_text())
    assert set(timing["step_ms"]) == {"student", "student_2x", "all"} and timing["cpu"]
    assert timing["digests"]["all"] == record("all", 0)["config_digest"]
    for key in ("student", "student_2x", "all"):
        assert rows[key]["cost_min"] == pytest.approx(rows[key]["mean"]["steps"] * timing["step_ms"][key] / 60000)
        assert f"- {rows[key]['label']}: {timing['step_ms'][key]:.0f} ms a step" in text
    for axis, x in ((by_step, "step"), (by_time, "cost_min")):
        curve = {line.get_label(): line for line in axis.get_lines()}["student, 2S"]
        points = rows["student_2x"]["checkpoints"]
        assert list(curve.get_xdata()) == pytest.approx([p[x] for p in points])
        assert list(curve.get_ydata()) == pytest.approx([100 * p["AP"] for p in points])
    assert "measured interleaved" in by_time.get_xlabel()

    # A new machine: the run directories are gone, the records and AP tables (committed) and the
    # teacher are not. Nothing retrains, and the page keeps its intervals.
    shutil.rmtree(runs)
    calls = []

    def refuse_training(*args, **kw):
        calls.append(args)
        raise RuntimeError("retrained")

    monkeypatch.setattr(runs_module, "run_training", refuse_training)
    again = run_suite(TINY_CONVERGED, shapes_dir, runs, results, **kwargs)
    assert calls == []
    rebuilt = json.loads((results / "tinyconverged.json").read_text())
    assert rebuilt["families"]["conditional_detr"]["rows"] == summary["families"]["conditional_detr"]["rows"]
    assert again.read_text() == text
    # A partial invocation finds them on the full page, and copies them to its own.
    subset = run_suite(TINY_CONVERGED, shapes_dir, runs, results, rows=["student", "student_2x", "all"], **kwargs)
    assert calls == [] and subset.name == "tinyconverged_student-student_2x-all.md"
    assert (results / "tinyconverged_student-student_2x-all" / "conditional_detr__all__seed1.ap.npz").is_file()
    # A record of another config (here: the 2S student's under the S student's name) is not reused.
    shutil.rmtree(results / "tinyconverged_student-student_2x-all")
    (page / "conditional_detr__student__seed0.json").write_text(json.dumps(record("student_2x", 0)))
    with pytest.raises(RuntimeError, match="retrained"):
        run_suite(TINY_CONVERGED, shapes_dir, runs, results, **kwargs)
    assert len(calls) == 1


def test_commit_files_commits_those_files_alone(tmp_path, monkeypatch, capsys):
    import subprocess

    from detrdistill.bench.commit import commit_files

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "user.email", "bench@example.org")
    git("config", "user.name", "bench")
    (tmp_path / "other.txt").write_text("work in progress")
    git("add", "other.txt")  # staged by someone else: must stay out of the results commit
    monkeypatch.chdir(tmp_path)
    record = tmp_path / "results" / "run.json"
    record.parent.mkdir()
    record.write_text("{}")
    assert commit_files([record, tmp_path / "results" / "absent.ap.npz"], "Results: run")
    assert git("show", "--name-only", "--format=%s", "HEAD").split() == ["Results:", "run", "results/run.json"]
    assert git("diff", "--cached", "--name-only").split() == ["other.txt"]
    assert not commit_files([record], "Results: unchanged")  # nothing new: no empty commit
    (tmp_path / ".gitignore").write_text("runs/\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "eval.json").write_text("{}")
    assert not commit_files([tmp_path / "runs"], "Results: ignored")  # an ignored run directory: skipped
    monkeypatch.chdir(tmp_path.parent)  # not a repository: a warning, not an error
    record.write_text('{"changed": 1}')
    assert not commit_files([record], "Results: run")
    assert "could not commit" in capsys.readouterr().out
