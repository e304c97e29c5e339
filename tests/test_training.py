"""Training: sampler, schedule, exact resume, atomic checkpoints, run directory, backbone cache."""

import json
import math
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForObjectDetection

from detrdistill.cli import main
from detrdistill.config import TrainConfig, config_to_dict, load_config, save_config
from detrdistill.data.coco import CocoDetection
from detrdistill.models import backbone_pretraining
from detrdistill.models.backbone_pretraining import cached_backbone
from detrdistill.models.build import backbone_module, build_detector
from detrdistill.training import checkpoint as checkpoint_module
from detrdistill.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from detrdistill.training.loop import DetectionObjective, fit, seed_everything
from detrdistill.training.optim import build_optimizer, lr_factor
from detrdistill.training.prepare import load_datasets, prepare_detector
from detrdistill.training.sampler import ResumableBatchSampler
from tests.conftest import make_tiny_run_config

AP_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}
STEPS = 6


def take(iterator, count: int) -> list:
    return [next(iterator) for _ in range(count)]


# --- Sampler and schedule ---


def test_sampler_is_deterministic_and_resumes_exactly():
    # 10 samples in batches of 3: 3 batches per epoch (one sample left out each epoch).
    full = take(iter(ResumableBatchSampler(10, 3, seed=7)), 9)
    assert full == take(iter(ResumableBatchSampler(10, 3, seed=7)), 9)
    assert full != take(iter(ResumableBatchSampler(10, 3, seed=8)), 9)
    assert all(len(batch) == 3 for batch in full)
    for epoch in range(3):
        seen = [i for batch in full[3 * epoch : 3 * epoch + 3] for i in batch]
        assert len(set(seen)) == 9 and set(seen) <= set(range(10))
    assert full[:3] != full[3:6]  # each epoch has its own order
    # Starting at step s yields exactly the tail, also from mid-epoch across the boundary.
    for start in (1, 2, 3, 4, 7):
        assert take(iter(ResumableBatchSampler(10, 3, seed=7, start_step=start)), 9 - start) == full[start:]


def test_sampler_needs_one_full_batch():
    ResumableBatchSampler(4, 4, seed=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableBatchSampler(3, 4, seed=0)


def test_lr_factor_warmup_and_drop():
    train = TrainConfig(warmup_steps=4, lr_drop_at=0.5, lr_drop_factor=0.1)
    assert [lr_factor(step, 0.0, train) for step in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert lr_factor(10, 0.49, train) == pytest.approx(1.0)
    assert lr_factor(10, 0.5, train) == pytest.approx(0.1)
    assert lr_factor(10, 0.9, train) == pytest.approx(0.1)
    assert lr_factor(0, 0.6, train) == pytest.approx(0.025)  # warm-up and drop multiply
    assert lr_factor(0, 0.0, TrainConfig(warmup_steps=0)) == 1.0


# --- Training runs through the CLI ---


def write_config(path, config) -> str:
    save_config(config, path)
    return str(path)


def train_cli(config_path, data, out, *extra) -> int:
    return main(["train", "--config", config_path, "--data", str(data), "--out", str(out), *extra])


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(run_dir) -> dict[int, dict]:
    return {m["step"]: m for m in read_metrics(run_dir) if "loss" in m}


@pytest.fixture(scope="module")
def runs(shapes_dir, tmp_path_factory, tiny_run_config):
    """One uninterrupted 6-step run, and one of 3 steps resumed to 6, both through the CLI.

    lr_drop_at 1.0: the schedule never depends on the total budget, which differs between
    the first half of the interrupted run (3 steps) and the others (6).
    """
    root = tmp_path_factory.mktemp("runs")
    config = tiny_run_config("conditional_detr", steps=STEPS, lr_drop_at=1.0)
    config_path = write_config(root / "run.yaml", config)
    assert train_cli(config_path, shapes_dir, root / "full") == 0
    assert train_cli(config_path, shapes_dir, root / "resumed", "--steps", "3") == 0
    first_half = {
        "checkpoint": torch.load(root / "resumed" / CHECKPOINT_NAME, weights_only=False)["step"],
        "eval": json.loads((root / "resumed" / "eval.json").read_text()),
    }
    # Marks the first half's init record, which the resume must keep rather than rewrite.
    init_path = root / "resumed" / "init.json"
    init_path.write_text(json.dumps({**json.loads(init_path.read_text()), "part": "first"}))
    assert train_cli(config_path, shapes_dir, root / "resumed", "--resume") == 0
    return {
        "config": config,
        "config_path": config_path,
        "full": root / "full",
        "resumed": root / "resumed",
        "first_half": first_half,
        "root": root,
    }


def test_resumed_run_equals_uninterrupted_run(runs):
    assert runs["first_half"]["checkpoint"] == 3 and runs["first_half"]["eval"]["steps"] == 3
    full, resumed = step_losses(runs["full"]), step_losses(runs["resumed"])
    assert sorted(full) == sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for key in ("loss", "det_cls", "det_bbox", "det_giou", "lr"):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-5, abs=1e-7), (step, key)
    # The loss actually changes from step to step (the comparison is not of constants).
    assert len({round(full[step]["loss"], 6) for step in full}) > 1

    full_model = AutoModelForObjectDetection.from_pretrained(runs["full"] / "model")
    resumed_model = AutoModelForObjectDetection.from_pretrained(runs["resumed"] / "model")
    resumed_state = resumed_model.state_dict()
    for name, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_state[name], value, atol=1e-5, rtol=0, msg=name)
    full_eval = json.loads((runs["full"] / "eval.json").read_text())
    resumed_eval = json.loads((runs["resumed"] / "eval.json").read_text())
    assert resumed_eval["steps"] == full_eval["steps"] == STEPS
    assert resumed_eval["AP"] == pytest.approx(full_eval["AP"], abs=1e-6)
    # The resumed run's metrics hold one final evaluation line per part, none duplicated.
    evals = [m for m in read_metrics(runs["resumed"]) if "eval" in m]
    assert [m["step"] for m in evals] == [3, STEPS]


def test_existing_run_needs_resume(runs, shapes_dir, capsys):
    capsys.readouterr()
    assert train_cli(runs["config_path"], shapes_dir, runs["full"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and CHECKPOINT_NAME in err
    # The run is untouched: the refusal comes before any file is written.
    before = {path: path.stat().st_mtime_ns for path in runs["full"].rglob("*")}
    assert train_cli(runs["config_path"], shapes_dir, runs["full"]) == 2
    assert {path: path.stat().st_mtime_ns for path in runs["full"].rglob("*")} == before
    assert len(step_losses(runs["full"])) == STEPS


def test_resume_keeps_the_init_record_of_the_runs_start(runs):
    """init.json tells how the run began (its pretraining time), so the resumed half leaves it be."""
    assert json.loads((runs["resumed"] / "init.json").read_text())["part"] == "first"


def test_fit_refuses_to_overwrite_a_run(runs, shapes_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(runs["full"], out)
    config = runs["config"]
    train_set, val_set = load_datasets(shapes_dir, config.data)
    model, _ = prepare_detector(config, train_set, tmp_path / "cache", progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        fit(DetectionObjective(model, config), model, config, train_set, val_set, out, progress=False)


def test_run_directory_contents(runs):
    run = runs["full"]
    assert not list(run.rglob("*.tmp"))
    assert config_to_dict(load_config(run / "config.yaml")) == config_to_dict(runs["config"])
    state = torch.load(run / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert state["step"] == STEPS and set(state["modules"]) == {"model"}
    assert {"torch", "numpy", "python"} <= set(state["rng"])

    metrics = read_metrics(run)
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, STEPS + 1))
    assert all(isinstance(m["loss"], float) for m in metrics if "loss" in m)
    assert metrics[-1]["step"] == STEPS and AP_KEYS <= set(metrics[-1]["eval"])

    model = AutoModelForObjectDetection.from_pretrained(run / "model")
    assert model.config.model_type == "conditional_detr"
    assert list(model.config.id2label.values()) == ["circle", "square", "triangle", "cross", "ring", "diamond"]
    torch.testing.assert_close(
        model.state_dict()["class_labels_classifier.weight"],
        state["modules"]["model"]["class_labels_classifier.weight"],
    )

    result = json.loads((run / "eval.json").read_text())
    assert AP_KEYS <= set(result) and result["split"] == "val" and result["steps"] == STEPS
    # An area range without ground truth reports NaN (evaluate.py), never -1.
    assert result["num_images"] == 8 and all(math.isnan(result[k]) or 0 <= result[k] <= 1 for k in AP_KEYS)
    assert json.loads((run / "init.json").read_text())["init"] == "random"


# --- Checkpoints ---


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, TrainConfig())
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"model": model}, optimizer, step=5, elapsed_s=1.0)
    saved_weight = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)

    real_save = torch.save

    def crash_mid_write(obj, file):
        real_save(obj, file)
        with open(file, "r+b") as f:  # leave a truncated file behind, then die
            f.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": model}, optimizer, step=6, elapsed_s=2.0)
    monkeypatch.undo()

    # The previous checkpoint is intact and restores model, step and RNG state.
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "rng.pt", {"model": model}, optimizer, step=0, elapsed_s=0.0)
    step, elapsed = load_checkpoint(path, {"model": model}, optimizer)
    assert (step, elapsed) == (5, 1.0)
    assert torch.equal(model.weight, saved_weight)
    load_checkpoint(tmp_path / "rng.pt", {"model": model}, optimizer)
    assert torch.equal(torch.rand(3), expected_draw)

    with pytest.raises(ValueError, match="no state for"):
        load_checkpoint(path, {"model": model, "projector": torch.nn.Linear(2, 2)}, optimizer)


# --- Backbone pretraining cache ---


def test_backbone_cache_hits_and_keys_on_width(shapes_dir, tmp_path, monkeypatch, tiny_run_config):
    config = tiny_run_config(pretraining=True)
    dataset = CocoDetection(shapes_dir, "train", transforms=None)
    cache = tmp_path / "cache"
    state, stats, path = cached_backbone(
        dataset, config.model.backbone, config.backbone_pretraining, cache, seed=0, progress=False
    )
    assert path.is_file() and path.parent == cache and not list(cache.glob("*.tmp"))
    assert stats["steps"] == 5 and 0 <= stats["val_accuracy"] <= 1

    def must_not_pretrain(*args, **kwargs):
        raise AssertionError("pretrained again although the cache holds this backbone")

    monkeypatch.setattr(backbone_pretraining, "pretrain_backbone", must_not_pretrain)
    state_again, stats_again, path_again = cached_backbone(
        dataset, config.model.backbone, config.backbone_pretraining, cache, seed=0, progress=False
    )
    assert path_again == path and stats_again == stats
    assert state_again.keys() == state.keys() and all(torch.equal(state_again[k], state[k]) for k in state)

    # prepare_detector starts the detector's backbone from the cached weights.
    train_set, _ = load_datasets(shapes_dir, config.data)
    model, init = prepare_detector(config, train_set, cache, progress=False)
    assert init["init"] == "pretrained backbone" and init["backbone_cache"] == str(path)
    loaded = backbone_module(model).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))

    monkeypatch.undo()
    wider = config.model.backbone
    wider.hidden_sizes = [8, 16, 32, 48]
    _, _, wider_path = cached_backbone(dataset, wider, config.backbone_pretraining, cache, seed=0, progress=False)
    assert wider_path != path and wider_path.is_file() and path.is_file()


# --- Images without objects ---


def test_training_with_empty_images(shapes_dir, tmp_path, tiny_run_config):
    """Two thirds of the images lose their objects, so some batches hold none at all."""
    data = tmp_path / "sparse"
    shutil.copytree(shapes_dir / "images", data / "images")
    (data / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        coco = json.loads((shapes_dir / "annotations" / f"instances_{split}.json").read_text())
        if split == "train":
            coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] % 3 == 0]
            with_objects = {a["image_id"] for a in coco["annotations"]}
            empty = {index for index, image in enumerate(coco["images"]) if image["id"] not in with_objects}
        (data / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))

    config = tiny_run_config("deformable_detr", steps=6)
    # The batches fit will draw: at least one holds no object at all, and one holds some.
    batches = take(iter(ResumableBatchSampler(24, config.data.batch_size, config.train.seed)), 6)
    assert any(set(batch) <= empty for batch in batches)
    assert any(not set(batch) <= empty for batch in batches)
    seed_everything(0)
    train_set, val_set = load_datasets(data, config.data)
    model, _ = prepare_detector(config, train_set, tmp_path / "cache", progress=False)
    result = fit(DetectionObjective(model, config), model, config, train_set, val_set, tmp_path / "run", progress=False)
    assert result["steps"] == 6
    losses = step_losses(tmp_path / "run")
    assert len(losses) == 6
    assert all(torch.isfinite(torch.tensor(m[k])) for m in losses.values() for k in ("loss", "det_bbox", "det_giou"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_evaluation_leaves_the_training_rng_alone(shapes_dir, tiny_detector, tiny_run_config):
    """How often a run evaluates must not change its later augmentations."""
    from detrdistill.inference import evaluate_model

    _, val_set = load_datasets(shapes_dir, tiny_run_config().data)
    model = tiny_detector("conditional_detr", id2label=val_set.id2label)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    evaluate_model(model, val_set, batch_size=4, progress=False)
    assert torch.equal(torch.get_rng_state(), before)


class _RunsCode:
    """Unpickling this would run a shell command: what a shared run directory must never do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_checkpoints_are_read_without_unpickling_code(tmp_path):
    from detrdistill.training.checkpoint import CheckpointError, read_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"modules": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(path)
    assert not marker.exists()


def test_a_truncated_checkpoint_on_resume_names_the_file(shapes_dir, tmp_path, capsys):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(make_tiny_run_config("conditional_detr", steps=3))))
    out = tmp_path / "run"
    args = ["train", "--config", str(config_path), "--data", str(shapes_dir), "--out", str(out)]
    assert main(args) == 0
    checkpoint = out / CHECKPOINT_NAME
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    capsys.readouterr()
    assert main([*args, "--steps", "4", "--resume"]) == 2
    error = capsys.readouterr().err
    assert str(checkpoint) in error and "truncated or corrupt" in error


def test_a_truncated_model_on_eval_names_the_directory(shapes_dir, tmp_path, capsys):
    model_dir = tmp_path / "model"
    build_detector(make_tiny_run_config("conditional_detr").model, CocoDetection(shapes_dir, "train").id2label
                   ).save_pretrained(model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["eval", str(model_dir), "--data", str(shapes_dir)]) == 2
    error = capsys.readouterr().err
    assert str(model_dir) in error and "truncated or corrupt" in error
