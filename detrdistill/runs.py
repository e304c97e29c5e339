"""Run directories as the demo, the bench and the notebooks use them: data generated or
reused, a run trained or reused, a finished run loaded with the val split it was evaluated
on, finished runs as one AP table.

One definition of each, so the three callers agree on what a finished run is: a run
directory holding ``eval.json`` and a saved model (``training/run.py`` writes the model
before ``eval.json``, so a run killed between the two is resumed, never half-reused).
An interrupted run is resumed from its checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from detrdistill.config import RunConfig, load_config
from detrdistill.data.coco import CocoDetection
from detrdistill.data.shapes import make_shapes
from detrdistill.evaluate import AP_KEYS, format_ap_table
from detrdistill.models.build import load_detector, resolve_model_dir
from detrdistill.training import prepare
from detrdistill.training.checkpoint import CHECKPOINT_NAME
from detrdistill.training.run import run_training


def ensure_shapes(data_dir: str | Path, num_train: int = 4000, num_val: int = 1000, image_size: int = 128,
                  seed: int = 0, progress: bool = True) -> Path:
    """The shapes dataset in ``data_dir``: reused when its val annotations exist, else generated."""
    data_dir = Path(data_dir)
    if (data_dir / "annotations" / "instances_val.json").is_file():
        return data_dir
    if progress:
        print(f"[data] generating the embedded shapes set in {data_dir} (about 30 s)")
    return make_shapes(data_dir, num_train=num_train, num_val=num_val, seed=seed, image_size=image_size,
                       progress=progress)


def is_finished(run_dir: str | Path | None) -> bool:
    """True when ``run_dir`` holds a finished run (its ``eval.json`` and ``model/``)."""
    if run_dir is None:
        return False
    run_dir = Path(run_dir)
    return (run_dir / "eval.json").is_file() and (resolve_model_dir(run_dir) / "config.json").is_file()


def train_or_reuse(config: RunConfig, data_dir: str | Path, run_dir: str | Path, teacher: str | Path | None = None,
                   label: str | None = None, progress: bool = True) -> dict:
    """The run's eval.json dict: read when ``run_dir`` holds a finished run, else ``config``
    trained there (distilling from ``teacher`` when given), resumed if it has a checkpoint.

    ``label`` names the run in the one line printed either way (None: print nothing)."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        if label:
            print(f"[run] {label}: reusing the finished run in {run_dir}")
        return json.loads((run_dir / "eval.json").read_text())
    resume = (run_dir / CHECKPOINT_NAME).is_file()
    if label:
        budget = f"{config.train.steps} steps" if config.train.steps else f"{config.train.minutes:.1f} min"
        print(f"[run] {label}: {'resuming' if resume else 'training'} {budget} in {run_dir}"
              f"{' from teacher ' + str(teacher) if teacher else ''}")
    return run_training(copy.deepcopy(config), Path(data_dir), run_dir, teacher=Path(teacher) if teacher else None,
                        resume=resume, progress=progress)


def model_digest(run_dir: str | Path) -> str:
    """A trained model's identity: a digest of its weights (``model.safetensors`` of the run's
    model directory), the same for a teacher retrained bit-identically, another for any change."""
    weights = sorted(resolve_model_dir(Path(run_dir)).glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{run_dir}: no model weights (model/*.safetensors); train the run first")
    digest = hashlib.sha1()
    for path in weights:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass
class LoadedRun:
    """A trained model with the config it was trained with.

    Attributes:
        path: the run (or bare model) directory.
        model: the transformers detector, in eval mode.
        config: the run's resolved ``config.yaml`` (defaults for a bare model directory).
        eval: the run's ``eval.json`` (empty when absent).
    """

    path: Path
    model: object
    config: RunConfig
    eval: dict

    @property
    def name(self) -> str:
        return self.path.name


def load_run(run_dir: str | Path) -> LoadedRun:
    """Load a run directory (or any ``from_pretrained`` directory) for analysis."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory {run_dir} does not exist: train it first (detrdistill train/distill)")
    config_file = run_dir / "config.yaml"
    config = load_config(config_file) if config_file.is_file() else RunConfig()
    eval_file = run_dir / "eval.json"
    metrics = json.loads(eval_file.read_text()) if eval_file.is_file() else {}
    return LoadedRun(path=run_dir, model=load_detector(run_dir).eval(), config=config, eval=metrics)


def eval_dataset(data_dir: str | Path, config: RunConfig, split: str | None = None) -> CocoDetection:
    """A split (default: the config's val split) as the run's training evaluated it."""
    return prepare.eval_dataset(Path(data_dir), config.data, split)


def runs_table(evaluations: dict[str, dict]) -> str:
    """Markdown AP table (x100) by row name of eval.json dicts, with their steps and step time."""
    return format_ap_table({name: {**{k: metrics.get(k) for k in AP_KEYS}, "steps": metrics.get("steps"),
                                   "step_ms": metrics.get("step_ms")} for name, metrics in evaluations.items()})


def finished_runs_table(runs: dict[str, str | Path]) -> str:
    """``runs_table`` of finished run directories by name."""
    return runs_table({name: json.loads((Path(run_dir) / "eval.json").read_text()) for name, run_dir in runs.items()})
