"""The training loop: data, forward, loss, backward, step, log, checkpoint. Nothing hidden.

The loss comes from an *objective*: a callable taking a collated batch and returning a
dict of named loss terms (summed for the backward pass). ``DetectionObjective`` is the
plain detector; the distiller is another objective over the same loop.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from detrdistill.config import RunConfig, save_config
from detrdistill.data.coco import CocoDetection
from detrdistill.data.collate import collate_detection
from detrdistill.inference import evaluate_model
from detrdistill.losses.detection import DetectionLoss
from detrdistill.models.adapters import adapter_for
from detrdistill.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from detrdistill.training.optim import build_optimizer, lr_factor, set_lr
from detrdistill.training.sampler import ResumableBatchSampler


class DetectionObjective:
    """The detector's own loss: Hungarian matching + focal/CE + L1 + GIoU on every stage."""

    def __init__(self, model, config: RunConfig):
        self.model = model
        self.adapter = adapter_for(model)
        self.criterion = DetectionLoss(config.loss, self.adapter.num_classes, self.adapter.class_head)

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """Everything whose state a checkpoint must hold."""
        return {"model": self.model}

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        record = self.adapter(batch["pixel_values"], batch["pixel_mask"])
        terms, _ = self.criterion(record.logits, record.boxes_cxcywh, batch["labels"])
        return terms


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in lines))


def fit(
    objective,
    model,
    config: RunConfig,
    train_set: CocoDetection,
    val_set: CocoDetection,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    extra_trainable: list[torch.nn.Module] = (),
) -> dict:
    """Train ``model`` by minimising ``objective`` and write the run directory.

    Writes ``config.yaml``, ``metrics.jsonl`` (one line per log step / evaluation),
    ``checkpoint.pt`` (atomic, every ``checkpoint_every`` steps and at the end),
    ``model/`` (``save_pretrained``) and ``eval.json`` (final val AP). Returns eval.json's dict.
    """
    train = config.train
    if train.steps is None and train.minutes is None:
        raise ValueError("give a budget: train.steps and/or train.minutes")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, metrics_path = out_dir / CHECKPOINT_NAME, out_dir / "metrics.jsonl"
    optimizer = build_optimizer(model, train, extra_trainable)

    step, elapsed_s = 0, 0.0
    if checkpoint_path.exists():
        if not resume:
            raise FileExistsError(
                f"{out_dir} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it "
                "or choose another --out"
            )
        step, elapsed_s = load_checkpoint(checkpoint_path, objective.modules, optimizer)
        _truncate_metrics(metrics_path, step)
    elif metrics_path.exists():
        metrics_path.unlink()
    save_config(config, out_dir / "config.yaml")

    budget_steps = train.steps if train.steps is not None else math.inf
    budget_s = train.minutes * 60 if train.minutes is not None else math.inf

    def progress_fraction() -> float:
        return max(step / budget_steps, elapsed_s / budget_s)

    sampler = ResumableBatchSampler(len(train_set), config.data.batch_size, train.seed, start_step=step)
    # A private generator: creating the loader must not draw from the global RNG, whose state
    # a resumed run restores from the checkpoint.
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        collate_fn=collate_detection,
        num_workers=config.data.num_workers,
        generator=torch.Generator().manual_seed(train.seed),
    )
    bar = tqdm(
        total=train.steps if train.steps is not None else None,
        initial=step,
        desc=out_dir.name,
        disable=not progress,
        dynamic_ncols=True,
    )
    model.train()
    batches = iter(loader)  # endless: the sampler never runs out
    # Check the budget before drawing a batch: drawing runs the batch's random augmentation,
    # and the final checkpoint must hold the RNG state from before it, or a resumed run would
    # augment its first batch differently from an uninterrupted run.
    while progress_fraction() < 1.0:
        batch = next(batches)
        started = time.perf_counter()
        set_lr(optimizer, lr_factor(step, progress_fraction(), train))
        terms = objective(batch)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}: terms {_floats(terms)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for group in optimizer.param_groups for p in group["params"]], train.clip_grad_norm
            )
        optimizer.step()
        step_s = time.perf_counter() - started
        step += 1
        elapsed_s += step_s
        bar.update(1)

        if step % train.log_every == 0 or step == 1:
            record = {"step": step, "loss": loss.item(), **_floats(terms), "lr": optimizer.param_groups[0]["lr"],
                      "step_ms": round(step_s * 1000, 1), "elapsed_s": round(elapsed_s, 1)}
            _append_jsonl(metrics_path, record)
            postfix = {"loss": f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in _floats(terms).items()}}
            if budget_s < math.inf:
                postfix["left"] = f"{max(budget_s - elapsed_s, 0) / 60:.1f}min"
            bar.set_postfix(postfix)
        if train.eval_every and step % train.eval_every == 0:
            metrics = evaluate_model(model, val_set, config.data.eval_batch_size, train.eval_max_images, False)
            _append_jsonl(metrics_path, {"step": step, "elapsed_s": round(elapsed_s, 1), "eval": metrics})
            bar.write(f"step {step}: val AP {metrics['AP']:.3f} (AP50 {metrics['AP50']:.3f})")
        if step % train.checkpoint_every == 0:
            save_checkpoint(checkpoint_path, objective.modules, optimizer, step, elapsed_s)
    bar.close()

    save_checkpoint(checkpoint_path, objective.modules, optimizer, step, elapsed_s)
    model.save_pretrained(out_dir / "model")
    metrics = evaluate_model(model, val_set, config.data.eval_batch_size, None, progress)
    result = {**metrics, "steps": step, "train_s": round(elapsed_s, 1),
              "step_ms": round(1000 * elapsed_s / max(step, 1), 1), "split": val_set.split}
    _append_jsonl(metrics_path, {"step": step, "elapsed_s": round(elapsed_s, 1), "eval": metrics})
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}
