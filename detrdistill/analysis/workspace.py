"""The notebooks' runs: tiny and shortened presets, the three standard runs, ablations.

Runs are trained or reused through ``detrdistill.runs`` (the same definition of a finished
run as the demo and the bench), so a second notebook run reuses what the first trained.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from detrdistill.config import FAMILY_PRESETS, BackboneConfig, RunConfig, load_config
from detrdistill.data.coco import CocoDetection
from detrdistill.runs import is_finished, train_or_reuse

# Tiny models for smoke runs (seconds on a CPU): the width and depth of tests/conftest.py.
TINY_IMAGE_SIZE = 64


def tiny_config(preset: str | Path, steps: int = 20, image_size: int = TINY_IMAGE_SIZE) -> RunConfig:
    """``preset`` shrunk to a model that trains in seconds: width 32, 2 encoder / 3 decoder
    layers, 10 queries, a 4-stage ResNet of widths 8-64, no backbone pretraining.

    The family, its multi-scale setting and the ``distill`` section are kept.
    """
    config = load_config(preset)
    model = config.model
    model.d_model, model.encoder_layers, model.decoder_layers = 32, 2, 3
    model.encoder_attention_heads = model.decoder_attention_heads = 4
    model.encoder_ffn_dim = model.decoder_ffn_dim = 64
    model.num_queries = 10
    model.encoder_n_points = model.decoder_n_points = 2
    model.backbone = BackboneConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                    out_features=list(model.backbone.out_features))
    config.backbone_pretraining.enabled = False
    config.data.image_size, config.data.batch_size, config.data.eval_batch_size = image_size, 4, 8
    config.train.steps, config.train.minutes = steps, None
    config.train.warmup_steps = min(config.train.warmup_steps, max(steps // 5, 1))
    config.train.log_every = max(1, min(config.train.log_every, steps // 4))
    config.train.checkpoint_every = max(steps, 1)
    config.train.eval_every = 0
    return config


def one_epoch_config(student: RunConfig, num_train_images: int, assignment_only: bool) -> RunConfig:
    """A config for one pass over the training split ("the checkpoint of the first epoch",
    Fig. 7), with only assignment distillation on when ``assignment_only``.

    The learning rate never drops within it: the run stands for the first epoch of a longer
    schedule, not for a finished short one.
    """
    config = copy.deepcopy(student)
    config.train.steps = math.ceil(num_train_images / config.data.batch_size)
    config.train.minutes = None
    config.train.lr_drop_at = 1.0
    config.train.eval_every = 0  # only the final evaluation: the run is measured afterwards
    config.train.warmup_steps = min(config.train.warmup_steps, config.train.steps // 5)
    config.distill.logits.enabled = not assignment_only
    config.distill.features.enabled = not assignment_only
    config.distill.assignment.enabled = True
    return config


def train_one_epoch(student: RunConfig, data_dir: str | Path, out_dir: str | Path, teacher: str | Path | None = None,
                    progress: bool = True) -> dict:
    """One epoch of the student: with ``teacher``, assignment distillation only (the paper's
    "student with query-prior assignment distillation after one epoch"); without, plain
    detection training (the control at the same point). Reuses a finished run."""
    train_split = CocoDetection(data_dir, student.data.train_split, invalid_boxes=student.data.invalid_boxes)
    config = one_epoch_config(student, len(train_split), assignment_only=teacher is not None)
    return train_or_reuse(config, data_dir, out_dir, teacher=teacher, progress=progress)


def preset_config(preset: str | Path, steps: int, tiny: bool = False) -> RunConfig:
    """A preset with ``steps`` training steps, or its ``tiny_config`` shrink for smoke runs."""
    if tiny:
        return tiny_config(preset, steps)
    config = load_config(preset)
    config.train.steps, config.train.minutes = steps, None
    return config


def reuse_or(run_dir: str | Path | None, fallback_dir: str | Path, tiny: bool = False) -> Path:
    """``run_dir`` when it holds a finished run and ``tiny`` is off (smoke runs never pick up
    full-size runs), else ``fallback_dir``."""
    return Path(run_dir) if run_dir and not tiny and is_finished(run_dir) else Path(fallback_dir)


def ensure_run(run_dir: str | Path | None, fallback_dir: str | Path, config: RunConfig, data_dir: str | Path,
               teacher: str | Path | None = None, tiny: bool = False, progress: bool = True) -> Path:
    """``reuse_or(run_dir, fallback_dir, tiny)``, with ``config`` trained (or resumed, or
    reused) there when it is the fallback."""
    chosen = reuse_or(run_dir, fallback_dir, tiny)
    if chosen == Path(fallback_dir):
        train_or_reuse(config, data_dir, chosen, teacher=teacher, progress=progress)
    return chosen


def standard_runs(data_dir: str | Path, work_dir: str | Path, teacher_run: str | Path | None = None,
                  student_run: str | Path | None = None, distilled_run: str | Path | None = None,
                  teacher_steps: int = 1200, student_steps: int = 500, tiny: bool = False,
                  teacher_preset: str = FAMILY_PRESETS["deformable_detr"].teacher,
                  student_preset: str = FAMILY_PRESETS["deformable_detr"].student,
                  progress: bool = True) -> dict[str, Path]:
    """The notebooks' three runs: {"teacher", "student", "distilled"} -> run directory.

    Given finished runs are reused (e.g. ``make demo``'s ``runs/demo/*``); the others are
    trained into ``work_dir``: the teacher preset, then the student preset for
    ``student_steps`` without and with DETRDistill from that teacher (same seed).
    """
    work_dir = Path(work_dir)
    teacher = ensure_run(teacher_run, work_dir / "teacher", preset_config(teacher_preset, teacher_steps, tiny),
                         data_dir, tiny=tiny, progress=progress)
    student_config = preset_config(student_preset, student_steps, tiny)
    student = ensure_run(student_run, work_dir / "student", student_config, data_dir, tiny=tiny, progress=progress)
    distilled = ensure_run(distilled_run, work_dir / "distilled", student_config, data_dir, teacher=teacher,
                           tiny=tiny, progress=progress)
    return {"teacher": teacher, "student": student, "distilled": distilled}


def distills(config: RunConfig) -> bool:
    """True when any DETRDistill component is on (the run needs a teacher)."""
    distill = config.distill
    return distill.logits.enabled or distill.features.enabled or distill.assignment.enabled


def train_variants(base: RunConfig, variants: dict[str, dict], data_dir: str | Path, out_dir: str | Path,
                   teacher: str | Path, progress: bool = True) -> dict[str, Path]:
    """An ablation: ``base`` with each variant's dotted overrides (``bench.overrides``), trained
    into ``out_dir/<variant index>``; variants with every KD component off train without the
    teacher. Finished runs are reused. Returns {variant name: run directory}."""
    from detrdistill.overrides import apply_overrides

    runs = {}
    for index, (name, overrides) in enumerate(variants.items()):
        config = apply_overrides(base, overrides, where=f"variant {name!r}")
        run_dir = Path(out_dir) / f"{index:02d}"
        train_or_reuse(config, data_dir, run_dir, teacher=teacher if distills(config) else None, progress=progress)
        runs[name] = run_dir
    return runs
