"""One call from a config to a finished run directory, with or without a teacher.

Shared by ``detrdistill train``, ``detrdistill distill``, the demo and the benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

from detrdistill.config import RunConfig
from detrdistill.data.errors import DatasetError
from detrdistill.distiller import DETRDistillObjective
from detrdistill.models.build import load_detector, resolve_model_dir
from detrdistill.training.loop import DetectionObjective, fit, seed_everything
from detrdistill.training.prepare import default_backbone_cache, load_datasets, prepare_detector


def run_training(
    config: RunConfig,
    data_dir: Path,
    out_dir: Path,
    teacher: Path | None = None,
    resume: bool = False,
    backbone_cache: Path | None = None,
    progress: bool = True,
) -> dict:
    """Train (``teacher`` None) or distill from ``teacher`` into ``out_dir``; return eval.json's dict."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    seed_everything(config.train.seed)
    train_set, val_set = load_datasets(data_dir, config.data)
    teacher_model = None
    if teacher is not None:
        config.distill.teacher = str(resolve_model_dir(teacher))
        teacher_model = load_detector(teacher)
        teacher_labels = {int(k): v for k, v in teacher_model.config.id2label.items()}
        if teacher_labels != train_set.id2label:
            raise DatasetError(
                f"the teacher in {teacher} was trained on classes {teacher_labels}, but "
                f"{train_set.annotation_file} has {train_set.id2label}: use a teacher trained on this label set"
            )
    student, init = prepare_detector(config, train_set, backbone_cache or default_backbone_cache(data_dir), progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "init.json").write_text(json.dumps({**init, "teacher": config.distill.teacher}, indent=2))
    if teacher_model is None:
        objective, extra = DetectionObjective(student, config), []
    else:
        objective = DETRDistillObjective(student, teacher_model, config)
        extra = [objective.heads]
    return fit(objective, student, config, train_set, val_set, out_dir, resume=resume, progress=progress,
               extra_trainable=extra)
