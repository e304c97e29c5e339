"""One call from a config to a finished run directory, with or without a teacher.

Shared by ``detrdistill train``, ``detrdistill distill``, the demo and the benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

from detrdistill.config import RunConfig
from detrdistill.distiller import DETRDistillObjective
from detrdistill.models.build import load_detector, resolve_model_dir
from detrdistill.models.label_sets import restrict_to_dataset_classes
from detrdistill.training.accelerator import make_accelerator
from detrdistill.training.loop import DetectionObjective, fit, seed_everything
from detrdistill.training.prepare import default_backbone_cache, load_datasets, prepare_detector
from detrdistill.training.run_dir import check_run_dir


def run_training(
    config: RunConfig,
    data_dir: Path,
    out_dir: Path,
    teacher: Path | None = None,
    resume: bool = False,
    backbone_cache: Path | None = None,
    progress: bool = True,
) -> dict:
    """Train (``teacher`` None) or distill from ``teacher`` into ``out_dir``; return eval.json's dict.

    Runs in every process of a multi-process launch (``training/accelerator.py``).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if teacher is not None:
        config.distill.teacher = str(resolve_model_dir(teacher))
    check_run_dir(out_dir, config, resume)  # before anything is written there
    accelerator = make_accelerator()
    seed_everything(config.train.seed)
    train_set, val_set = load_datasets(data_dir, config.data)
    teacher_model = None
    if teacher is not None:
        # A hub COCO checkpoint's 91 class slots become the dataset's categories (by name).
        teacher_model = restrict_to_dataset_classes(load_detector(teacher), train_set.id2label, str(teacher))
        teacher_model.to(accelerator.device)  # fit moves the trained modules; the frozen teacher is ours to move
    # The main process pretrains a missing backbone into the cache; the others then read it.
    with accelerator.main_process_first():
        cache = backbone_cache or default_backbone_cache(data_dir)
        student, init = prepare_detector(config, train_set, cache, progress and accelerator.is_main_process,
                                         accelerator.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A resumed run keeps the init.json of its start (it records that run's pretraining time).
    if accelerator.is_main_process and not (resume and (out_dir / "init.json").exists()):
        (out_dir / "init.json").write_text(json.dumps({**init, "teacher": config.distill.teacher}, indent=2))
    if teacher_model is None:
        objective, extra = DetectionObjective(student, config), []
    else:
        objective = DETRDistillObjective(student, teacher_model, config)
        extra = [objective.heads]
    return fit(objective, student, config, train_set, val_set, out_dir, resume=resume, progress=progress,
               extra_trainable=extra, accelerator=accelerator)
