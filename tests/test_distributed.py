"""Multi-process training (2 CPU processes over gloo), gradient accumulation, mixed precision, gpu presets.

Run as a script (``torchrun --nproc_per_node 2 tests/test_distributed.py ...``) this file is
also the worker that the 2-process test launches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detrdistill.cli import main as cli_main
from detrdistill.config import ConfigError, RunConfig, TrainConfig, load_config
from detrdistill.data.coco import CocoDetection
from detrdistill.data.errors import DatasetError
from detrdistill.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    RandomResize,
    ToTensorNormalize,
    build_transforms,
)
from detrdistill.distiller import DETRDistillObjective
from detrdistill.inference import evaluate_model
from detrdistill.models.build import build_detector, detector_config, load_detector
from detrdistill.models.label_sets import restrict_to_dataset_classes
from detrdistill.training.checkpoint import CHECKPOINT_NAME
from detrdistill.training.loop import DetectionObjective, box_normaliser, fit, seed_everything
from detrdistill.training.sampler import ResumableBatchSampler, SeededAugmentation

STEPS = 4
IMAGE_SIZE = 64
TERMS = ("loss", "det_cls", "det_bbox", "det_giou")
DISTILL_TERMS = (*TERMS, "ld_pos_cls", "ld_pos_box", "ld_neg_box", "fd", "ad_cls", "ad_bbox", "ad_giou")


def take(iterator, count: int) -> list:
    return [next(iterator) for _ in range(count)]


# --- Sampling and augmentation ---


def test_processes_share_each_global_batch():
    # 12 samples, global batch 4 over 2 processes: 3 global batches per epoch.
    single = take(iter(ResumableBatchSampler(12, 4, seed=3)), 7)
    shares = [take(iter(ResumableBatchSampler(12, 4, seed=3, num_processes=2, process_index=p)), 7) for p in (0, 1)]
    assert all(len(batch) == 2 for share in shares for batch in share)
    assert [a + b for a, b in zip(*shares, strict=True)] == single
    # Resuming at step 5 (mid second epoch) gives each process the same tail.
    for p in (0, 1):
        resumed = take(iter(ResumableBatchSampler(12, 4, seed=3, start_step=5, num_processes=2, process_index=p)), 2)
        assert resumed == shares[p][5:]
    # Augmentation seeds depend on (seed, epoch, index), not on the process drawing the sample.
    keyed = take(iter(ResumableBatchSampler(12, 4, seed=3, augment_seeds=True)), 7)
    keyed_shares = [
        take(iter(ResumableBatchSampler(12, 4, seed=3, num_processes=2, process_index=p, augment_seeds=True)), 7)
        for p in (0, 1)
    ]
    assert [a + b for a, b in zip(*keyed_shares, strict=True)] == keyed
    assert [[index for index, _ in batch] for batch in keyed] == single
    seeds = [seed for batch in keyed for _, seed in batch]
    assert len(set(seeds)) == len(seeds)  # sample 5 in epoch 0 and epoch 1 is augmented differently

    with pytest.raises(ValueError, match="data.batch_size 6 .* 4 processes"):
        ResumableBatchSampler(12, 6, seed=0, num_processes=4)


class RandomDraws(torch.utils.data.Dataset):
    """Each item is a draw from torch's global RNG: what an augmentation does."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3)


def test_seeded_augmentation_ignores_and_keeps_the_global_rng():
    dataset = SeededAugmentation(RandomDraws())
    torch.manual_seed(0)
    first = dataset[(4, 1234)]
    before = torch.get_rng_state()
    torch.rand(5)  # the global RNG moves on ...
    assert torch.equal(dataset[(4, 1234)], first)  # ... the sample's augmentation does not
    assert not torch.equal(dataset[(4, 1235)], first)
    torch.manual_seed(0)
    dataset[(4, 1234)]
    assert torch.equal(torch.get_rng_state(), before)  # and drawing it left the global RNG alone


def test_box_normaliser_counts_every_pass_of_the_step():
    def batch(*counts):
        return {"labels": [{"boxes": torch.zeros(n, 4)} for n in counts]}

    # One process, two passes of 3 + 1 and 2 + 0 boxes: 6 boxes / 2 passes.
    assert box_normaliser([batch(3, 1), batch(2, 0)]) == 3.0
    assert box_normaliser([batch(1, 0)]) == 1.0
    assert box_normaliser([batch(0, 0), batch(0, 0)]) == 1.0  # clamped like DETR's


# --- Shared helpers of the in-process runs and the worker ---


def fixed_size_datasets(data_dir: Path) -> tuple[CocoDetection, CocoDetection]:
    """Training images all resized to one size (with random flips).

    Batches are padded to their largest image and boxes normalised by the padded canvas,
    so with scale jitter one global batch and its per-process halves would see different
    inputs; at one size they see the same, and the runs can be compared number for number.
    """
    train = CocoDetection(
        data_dir, "train", transforms=Compose([RandomHorizontalFlip(), RandomResize([IMAGE_SIZE]), ToTensorNormalize()])
    )
    return train, CocoDetection(data_dir, "val", transforms=build_transforms(False, IMAGE_SIZE))


def tiny_config(**train) -> RunConfig:
    from conftest import make_tiny_run_config

    # An intermediate evaluation on 5 of the 8 val images at step 3, the final one on all at step 4.
    config = make_tiny_run_config("conditional_detr", **{"steps": STEPS, "checkpoint_every": 2, "lr_drop_at": 1.0,
                                                         "eval_every": 3, "eval_max_images": 5, **train})
    config.data.batch_size = 4
    return config


def train_run(config: RunConfig, data_dir: Path, out: Path, resume: bool = False) -> dict:
    seed_everything(0)
    train_set, val_set = fixed_size_datasets(data_dir)
    model = build_detector(config.model, train_set.id2label)
    return fit(DetectionObjective(model, config), model, config, train_set, val_set, out, resume=resume,
               progress=False)


def distill_run(config: RunConfig, data_dir: Path, teacher_dir: Path, out: Path) -> dict:
    seed_everything(0)
    train_set, val_set = fixed_size_datasets(data_dir)
    student = build_detector(config.model, train_set.id2label)
    objective = DETRDistillObjective(student, load_detector(teacher_dir), config)
    return fit(objective, student, config, train_set, val_set, out, progress=False, extra_trainable=[objective.heads])


def all_runs(data_dir: Path, teacher_dir: Path, out: Path) -> None:
    """Train 4 steps; train 2 steps and resume to 4; distill 4 steps."""
    train_run(tiny_config(), data_dir, out / "train")
    train_run(tiny_config(steps=2), data_dir, out / "resumed")
    train_run(tiny_config(), data_dir, out / "resumed", resume=True)
    distill_run(tiny_config(), data_dir, teacher_dir, out / "distill")


def worker(data_dir: str, teacher_dir: str, out: str) -> None:
    """One of the launched processes: all runs, and a record of the files it wrote to."""
    out = Path(out)
    written = set()

    def audit(event, args):
        if event == "open" and isinstance(args[0], str | Path):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                written.add(str(args[0]))
        elif event in ("os.rename", "os.remove", "os.mkdir"):
            written.add(str(args[0]))

    sys.addaudithook(audit)
    all_runs(Path(data_dir), Path(teacher_dir), out)
    rank = int(os.environ["RANK"])
    inside = sorted(str(Path(p).resolve().relative_to(out.resolve())) for p in written
                    if Path(p).resolve().is_relative_to(out.resolve()))
    (out.parent / f"writes_rank{rank}.json").write_text(json.dumps(inside))


# --- Two processes against one ---


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in read_metrics(run_dir) if "loss" in m}


@pytest.fixture(scope="module")
def runs(shapes_dir, tmp_path_factory, tiny_detector):
    root = tmp_path_factory.mktemp("distributed")
    teacher = tiny_detector("conditional_detr", seed=5, perturb=0.1,
                            id2label=CocoDetection(shapes_dir, "val").id2label)
    teacher.save_pretrained(root / "teacher")
    all_runs(shapes_dir, root / "teacher", root / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    (root / "two").mkdir()
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
         str(shapes_dir), str(root / "teacher"), str(root / "two" / "runs")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-5000:]
    return {"one": root / "one", "two": root / "two" / "runs", "root": root}


@pytest.mark.parametrize(("run", "terms"), [("train", TERMS), ("distill", DISTILL_TERMS), ("resumed", TERMS)])
def test_two_processes_follow_the_one_process_trajectory(runs, run, terms):
    one, two = step_losses(runs["one"] / run), step_losses(runs["two"] / run)
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        for key in terms:
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-6), (run, step, key)
    assert len({round(one[step]["loss"], 5) for step in one}) > 1  # the loss moves: not comparing constants
    if run == "distill":
        # Not the weights: LD's gradient on the reference-point layers is a near-cancelling
        # sum (relative rounding ~1e-4 already between one batch and its halves in one
        # process), and Adam's first step moves every weight by +-lr whatever its size.
        return
    one_model = load_detector(runs["one"] / run / "model").state_dict()
    for name, value in load_detector(runs["two"] / run / "model").state_dict().items():
        torch.testing.assert_close(value, one_model[name], atol=1e-4, rtol=1e-3, msg=name)


def test_two_process_resume_equals_uninterrupted(runs):
    full, resumed = step_losses(runs["two"] / "train"), step_losses(runs["two"] / "resumed")
    for step in full:
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-5), step


def test_only_the_main_process_writes(runs):
    rank0 = json.loads((runs["two"].parent / "writes_rank0.json").read_text())
    rank1 = json.loads((runs["two"].parent / "writes_rank1.json").read_text())
    for run in ("train", "resumed", "distill"):
        expected = {f"{run}/metrics.jsonl", f"{run}/config.yaml", f"{run}/eval.json", f"{run}/{CHECKPOINT_NAME}.tmp"}
        assert expected <= set(rank0), rank0
    assert set(rank1) <= {".", "train", "resumed", "distill"}, rank1  # only mkdir of the directories
    for run in ("train", "distill"):
        metrics = read_metrics(runs["two"] / run)
        assert [m["step"] for m in metrics if "loss" in m] == list(range(1, STEPS + 1))  # each step logged once
        evals = [m for m in metrics if "eval" in m]
        assert [(m["step"], m["eval"]["num_images"]) for m in evals] == [(3, 5), (STEPS, 8)]
        one_evals = [m for m in read_metrics(runs["one"] / run) if "eval" in m]
        for got, expected in zip(evals, one_evals, strict=True):
            assert got["eval"]["AP50"] == pytest.approx(expected["eval"]["AP50"], abs=1e-6)
    state = torch.load(runs["two"] / "train" / CHECKPOINT_NAME, weights_only=False)
    assert state["step"] == STEPS and len(state["rng_per_process"]) == 2
    # Each process draws its own dropout: different RNG states, both kept.
    assert not torch.equal(state["rng_per_process"][0]["torch"], state["rng_per_process"][1]["torch"])


def test_evaluation_gathered_from_both_processes(runs, shapes_dir):
    """Each process scored half of the val split; the main process's AP is that of all of it."""
    result = json.loads((runs["two"] / "train" / "eval.json").read_text())
    _, val_set = fixed_size_datasets(shapes_dir)
    assert result["num_images"] == len(val_set) == 8
    expected = evaluate_model(load_detector(runs["two"] / "train" / "model"), val_set, batch_size=8, progress=False)
    for key in ("AP", "AP50", "AP75"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key


# --- Gradient accumulation and mixed precision, one process ---


def test_grad_accumulation_equals_the_larger_batch(shapes_dir, tmp_path):
    big = tiny_config(steps=3)
    big.data.batch_size = 8
    accumulated = tiny_config(steps=3, grad_accum_steps=2)
    train_run(big, shapes_dir, tmp_path / "big")
    train_run(accumulated, shapes_dir, tmp_path / "accumulated")
    expected, got = step_losses(tmp_path / "big"), step_losses(tmp_path / "accumulated")
    for step in expected:
        for key in TERMS:
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
    big_model = load_detector(tmp_path / "big" / "model").state_dict()
    for name, value in load_detector(tmp_path / "accumulated" / "model").state_dict().items():
        torch.testing.assert_close(value, big_model[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_autocast_trains_with_float32_matching(shapes_dir, tmp_path):
    config = tiny_config(steps=2, mixed_precision="bf16")
    seed_everything(0)
    train_set, val_set = fixed_size_datasets(shapes_dir)
    model = build_detector(config.model, train_set.id2label)
    objective = DetectionObjective(model, config)
    head_dtypes, matched_dtypes = set(), set()
    model.class_labels_classifier.register_forward_hook(lambda _m, _i, out: head_dtypes.add(out.dtype))
    matcher = objective.criterion.matcher
    real_match = matcher.__call__

    def recording_match(logits, boxes, targets):
        matched_dtypes.update({logits.dtype, boxes.dtype})
        return real_match(logits, boxes, targets)

    objective.criterion.matcher = recording_match
    fit(objective, model, config, train_set, val_set, tmp_path / "run", progress=False)
    assert torch.bfloat16 in head_dtypes  # the forward pass ran under autocast ...
    assert matched_dtypes == {torch.float32}  # ... the matching did not
    losses = step_losses(tmp_path / "run")
    assert sorted(losses) == [1, 2]
    assert all(torch.isfinite(torch.tensor(m[k])) for m in losses.values() for k in TERMS)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32


def test_teacher_precision_apart_from_the_student(shapes_dir, tiny_detector):
    config = tiny_config()
    config.distill.teacher_precision = "bf16"
    train_set, _ = fixed_size_datasets(shapes_dir)
    student = tiny_detector("conditional_detr", id2label=train_set.id2label)
    teacher = tiny_detector("conditional_detr", seed=3, id2label=train_set.id2label)
    dtypes = {"student": set(), "teacher": set()}
    for name, model in (("student", student), ("teacher", teacher)):
        model.class_labels_classifier.register_forward_hook(lambda _m, _i, out, n=name: dtypes[n].add(out.dtype))
    objective = DETRDistillObjective(student, teacher, config)
    from detrdistill.data.collate import collate_detection

    terms = objective(collate_detection([train_set[i] for i in range(4)]))
    assert dtypes == {"student": {torch.float32}, "teacher": {torch.bfloat16}}
    assert all(torch.isfinite(value) and value.dtype == torch.float32 for value in terms.values())


def test_precision_and_accumulation_fields_are_checked():
    with pytest.raises(ConfigError, match="train.mixed_precision 'fp8'"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ConfigError, match="train.grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)
    config = RunConfig()
    with pytest.raises(ConfigError, match="distill.teacher_precision"):
        type(config.distill)(teacher_precision="int8")


# --- Hub checkpoints: 91 COCO class slots fitted to the dataset's categories ---


@pytest.mark.parametrize("family", ["detr", "conditional_detr", "deformable_detr"])
def test_class_head_cut_to_the_dataset_categories(family, tiny_detector):
    """A model with COCO-style slots (unused "N/A" ids, another order) predicts the dataset's
    classes exactly as before, in the dataset's label order."""
    hub_labels = {0: "N/A", 1: "triangle", 2: "circle", 3: "N/A", 4: "square", 5: "cross"}
    model = tiny_detector(family, id2label=hub_labels, perturb=0.1).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
    dataset_labels = {0: "circle", 1: "square", 2: "triangle"}
    restrict_to_dataset_classes(model, dataset_labels, "hub/checkpoint")
    with torch.no_grad():
        after = model(pixel_values=pixels).logits
    keep = [2, 4, 1] + ([6] if family == "detr" else [])  # DETR keeps its no-object column
    torch.testing.assert_close(after, before[..., keep])
    assert model.config.id2label == dataset_labels and model.config.num_labels == 3
    with pytest.raises(DatasetError, match="without the dataset's \\['ring'\\]"):
        restrict_to_dataset_classes(model, {0: "circle", 1: "ring"}, "hub/checkpoint")


# --- gpu presets ---

GPU_PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "detrdistill" / "configs").glob("gpu_*.yaml"))
# Parameter counts (millions) of the paper-size models with 6 classes: published Conditional DETR
# R50 43.5, R101 62.5; Deformable DETR R50 40; AdaMixer R50 139 with 300 queries (100 here).
EXPECTED_MILLIONS = {
    ("conditional_detr", "resnet50"): (42, 45), ("conditional_detr", "resnet101"): (61, 64),
    ("deformable_detr", "resnet50"): (39, 42), ("deformable_detr", "resnet101"): (58, 61),
    ("adamixer", "resnet50"): (130, 140), ("adamixer", "resnet101"): (149, 159),
}


def test_there_are_gpu_presets():
    assert {f"gpu_{family}_{role}" for family in ("conditional", "deformable", "adamixer")
            for role in ("teacher", "student")} <= set(GPU_PRESETS)


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_preset_builds_a_paper_size_model(preset, tmp_path):
    assert cli_main(["show-config", preset, "--out", str(tmp_path / "shown.yaml")]) == 0
    assert "mixed_precision: bf16" in (tmp_path / "shown.yaml").read_text()
    config = load_config(preset)
    id2label = {i: f"class{i}" for i in range(6)}
    hf_config = detector_config(config.model, id2label)
    backbone = config.model.backbone
    assert backbone.layer_type == "bottleneck" and backbone.hidden_sizes == [256, 512, 1024, 2048]
    depth = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}[tuple(backbone.depths)]
    assert hf_config.d_model == 256 and hf_config.num_queries == (100 if config.model.family == "adamixer" else 300)
    assert config.model.decoder_layers == 6
    # Built on the meta device: the architecture without allocating ~60M parameters.
    with torch.device("meta"):
        model = build_detector(config.model, id2label)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    low, high = EXPECTED_MILLIONS[config.model.family, depth]
    assert low <= millions <= high, millions


if __name__ == "__main__":
    worker(*sys.argv[1:])
