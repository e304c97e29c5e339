"""The training loop: data, forward, loss, backward, step, log, checkpoint. Nothing hidden.

The loss comes from an *objective*: a callable taking a collated batch and returning a
dict of named loss terms (summed for the backward pass). ``DetectionObjective`` is the
plain detector; the distiller is another objective over the same loop.

The same loop runs in one process or in several (``training/accelerator.py``): each
process takes its slice of every global batch, DDP averages the gradients, and the main
process alone logs and writes files. An optimiser step runs ``train.grad_accum_steps``
forward/backward passes; ``train.mixed_precision`` autocasts them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from detrdistill.config import RunConfig, save_config
from detrdistill.data.coco import CocoDetection
from detrdistill.data.collate import collate_detection
from detrdistill.distributed import max_over_processes, mean_over_processes
from detrdistill.losses.denoising import denoising_terms
from detrdistill.losses.detection import DetectionLoss
from detrdistill.models.adapters import adapter_for
from detrdistill.models.processors import save_image_processor
from detrdistill.precision import autocast
from detrdistill.training.accelerator import make_accelerator
from detrdistill.training.checkpoint import (
    CHECKPOINT_NAME,
    disk_space_hint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from detrdistill.training.evaluation import evaluate_across_processes
from detrdistill.training.grad_diagnostic import gradient_diagnostic, group_parameters
from detrdistill.training.machine_load import MACHINE_LOAD_NAME, LoadMonitor
from detrdistill.training.model_card import card_name, current_command, model_card
from detrdistill.training.optim import build_optimizer, lr_factor, set_lr
from detrdistill.training.run_dir import check_run_dir
from detrdistill.training.sampler import ResumableBatchSampler, SeededAugmentation


class DetectionObjective:
    """The detector's own loss: Hungarian matching + focal/CE + L1 + GIoU on every stage (the
    encoder's proposals included, where the family has them), and the denoising loss of
    families that train with denoising queries."""

    def __init__(self, model, config: RunConfig):
        self.model = model
        self.adapter = adapter_for(model)
        self.criterion = DetectionLoss(config.loss, self.adapter.num_classes, self.adapter.class_head)

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """Everything whose state a checkpoint must hold."""
        return {"model": self.model}

    @property
    def size_divisor(self) -> int:
        """What the batches' canvas sides must be multiples of (``collate_detection``)."""
        return self.adapter.size_divisor

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        labels, num_boxes = batch["labels"], batch.get("num_boxes")
        record = self.adapter(batch["pixel_values"], batch["pixel_mask"], labels)  # labels: denoising groups
        terms, _ = self.criterion(*record.detection_stages(), labels, num_boxes=num_boxes)
        if record.denoising is not None:
            terms.update(denoising_terms(self.criterion, record.denoising, labels, num_boxes))
        return terms


class ObjectiveModule(nn.Module):
    """An objective's trained modules as one ``nn.Module`` whose forward is the objective.

    This is what DDP wraps: gradients are averaged over processes only for parameters of a
    module whose forward ran through the wrapper, and a distiller's own layers train too.
    """

    def __init__(self, objective):
        super().__init__()
        self.trained = nn.ModuleDict(objective.modules)
        self.objective = objective

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.objective(batch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def box_normaliser(batches: list[dict]) -> float:
    """DETR's ``num_boxes`` for one optimiser step of ``len(batches)`` passes in every process:
    all ground-truth boxes of the step (over passes and processes) / (processes x passes), >= 1.

    Box terms (sums over matches) divided by it, averaged over the passes and (by DDP) the
    processes, equal those of one batch holding every image of the step.
    """
    local = torch.tensor(float(sum(len(target["boxes"]) for batch in batches for target in batch["labels"])))
    return max(mean_over_processes(local).item() / len(batches), 1.0)


def _append_jsonl(path: Path, record: dict) -> None:
    """One whole line per call; a full disk is named as such (the line may be left half-written,
    and ``_truncate_metrics`` drops it on resume)."""
    try:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as error:
        raise OSError(error.errno, f"could not write {path} ({error.strerror}){disk_space_hint(path)}") from error


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be redone), and
    a line cut short by a crash or a full disk."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written line: the step it belonged to is redone
        if record.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


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
    accelerator: Accelerator | None = None,
) -> dict:
    """Train ``model`` by minimising ``objective`` and write the run directory.

    Writes ``config.yaml``, ``metrics.jsonl`` (one line per log step / evaluation / gradient
    diagnostic),
    ``checkpoint.pt`` (atomic, every ``checkpoint_every`` steps and at the end),
    ``model/`` (``save_pretrained``, the image processor and a model card), ``eval.json``
    (final val AP) and a line of
    ``machine_load.jsonl`` (the load average and the other processes busy during this part of
    the run, one line per start or resume: ``training/machine_load.py``). Returns eval.json's
    dict (in every process). ``accelerator``: the process setup (default: a new one).
    """
    train = config.train
    if train.steps is None and train.minutes is None:
        raise ValueError("give a budget: train.steps and/or train.minutes")
    accelerator = accelerator or make_accelerator()
    main, device, accum = accelerator.is_main_process, accelerator.device, train.grad_accum_steps
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, metrics_path = out_dir / CHECKPOINT_NAME, out_dir / "metrics.jsonl"
    optimizer = build_optimizer(model, train, extra_trainable)
    # Moves the trained modules to the device (in place: the optimiser's parameters stay
    # valid) and, with several processes, wraps them in DDP.
    trained = accelerator.prepare_model(ObjectiveModule(objective))
    scaler = torch.amp.GradScaler(device.type, enabled=train.mixed_precision == "fp16")
    # Each process draws its own dropout: the RNGs start from seed + process index.
    torch.manual_seed(train.seed + accelerator.process_index)

    step, elapsed_s = 0, 0.0
    check_run_dir(out_dir, config, resume)
    if checkpoint_path.exists():
        step, elapsed_s = load_checkpoint(checkpoint_path, objective.modules, optimizer,
                                          accelerator.process_index, accelerator.num_processes, scaler)
        if main:
            _truncate_metrics(metrics_path, step)
    elif main and metrics_path.exists():
        metrics_path.unlink()
    if main:
        save_config(config, out_dir / "config.yaml")
    # Nobody writes before every process has seen whether a checkpoint was there.
    accelerator.wait_for_everyone()

    budget_steps = train.steps if train.steps is not None else math.inf
    budget_s = train.minutes * 60 if train.minutes is not None else math.inf

    def progress_fraction() -> float:
        return max(step / budget_steps, elapsed_s / budget_s)

    sampler = ResumableBatchSampler(
        len(train_set), config.data.batch_size, train.seed, start_step=step * accum,
        num_processes=accelerator.num_processes, process_index=accelerator.process_index, augment_seeds=True,
    )
    # A private generator: creating the loader must not draw from the global RNG, whose state
    # a resumed run restores from the checkpoint.
    loader = DataLoader(
        SeededAugmentation(train_set),
        batch_sampler=sampler,
        collate_fn=functools.partial(collate_detection, size_divisor=objective.size_divisor),
        num_workers=config.data.num_workers,
        generator=torch.Generator().manual_seed(train.seed),
    )
    bar = tqdm(
        total=train.steps if train.steps is not None else None,
        initial=step,
        desc=out_dir.name,
        disable=not (progress and main),
        dynamic_ncols=True,
    )
    load, first_step = LoadMonitor(), step
    diagnose_every = train.grad_diagnostic_every if main else 0
    diagnosed_groups = group_parameters(model, extra_trainable) if diagnose_every else {}
    trained.train()
    batches = iter(loader)  # endless: the sampler never runs out
    # Check the budget before drawing a batch, so the final checkpoint's RNG state is the one
    # an uninterrupted run has at that point.
    while progress_fraction() < 1.0:
        step_batches = [next(batches) for _ in range(accum)]
        started, diagnostic_s = time.perf_counter(), 0.0
        num_boxes = box_normaliser(step_batches)
        set_lr(optimizer, lr_factor(step, progress_fraction(), train))
        optimizer.zero_grad(set_to_none=True)
        terms = {}
        for index, batch in enumerate(step_batches):
            batch = {**send_to_device(batch, device), "num_boxes": num_boxes}
            # DDP averages gradients in the last backward pass of the step only.
            last = index == accum - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(trained):
                with autocast(train.mixed_precision, device):
                    pass_terms = trained(batch)
                loss = sum(pass_terms.values())
                _check_finite(loss, pass_terms, step)
                if diagnose_every and index == 0 and (step + 1) % diagnose_every == 0:
                    diagnostic = gradient_diagnostic(pass_terms, diagnosed_groups)
                    _append_jsonl(metrics_path, {"step": step + 1, **diagnostic})
                    diagnostic_s = diagnostic["grad_ms"] / 1000
                scaler.scale(loss / accum).backward()
            for name, value in pass_terms.items():
                terms[name] = terms.get(name, 0.0) + value.detach().float() / accum
        scaler.unscale_(optimizer)
        grad_norm = None
        if train.clip_grad_norm > 0:  # the norm before clipping, logged: how far clipping scales the step
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for group in optimizer.param_groups for p in group["params"]], train.clip_grad_norm
            )
        scaler.step(optimizer)
        scaler.update()
        # A diagnosed step's extra backward passes are not the run's: its step time and budget leave them out.
        step_s = time.perf_counter() - started - diagnostic_s
        step += 1
        elapsed_s += step_s
        if budget_s < math.inf:
            # Processes must agree on when the wall-clock budget ends: the slowest one decides.
            elapsed_s = max_over_processes(torch.tensor(elapsed_s, dtype=torch.float64)).item()
        bar.update(1)

        if step % train.log_every == 0 or step == 1:
            load.sample()
            # The loss of the global batch: the mean of the processes' losses (box terms exactly).
            logged = dict(zip(terms, mean_over_processes(torch.stack(list(terms.values()))).tolist(), strict=True))
            loss_value = sum(logged.values())
            if main:
                record = {"step": step, "loss": loss_value, **logged, "lr": optimizer.param_groups[0]["lr"],
                          "step_ms": round(step_s * 1000, 1), "elapsed_s": round(elapsed_s, 1)}
                if grad_norm is not None:
                    record["grad_total_norm"] = round(float(grad_norm), 4)
                _append_jsonl(metrics_path, record)
            postfix = {"loss": f"{loss_value:.3f}", **{k: f"{v:.2f}" for k, v in logged.items()}}
            if budget_s < math.inf:
                postfix["left"] = f"{max(budget_s - elapsed_s, 0) / 60:.1f}min"
            bar.set_postfix(postfix)
        # At the last step the final evaluation follows; one on the same images would be its copy.
        final_copy = progress_fraction() >= 1.0 and (train.eval_max_images or len(val_set)) >= len(val_set)
        if train.eval_every and step % train.eval_every == 0 and not final_copy:
            metrics = evaluate_across_processes(
                accelerator, model, val_set, config.data.eval_batch_size, train.eval_max_images, False
            )
            if main:
                _append_jsonl(metrics_path, {"step": step, "elapsed_s": round(elapsed_s, 1), "eval": metrics})
                bar.write(f"step {step}: val AP {metrics['AP']:.3f} (AP50 {metrics['AP50']:.3f})")
        if step % train.checkpoint_every == 0:
            _save(checkpoint_path, objective, optimizer, step, elapsed_s, scaler, main)
    bar.close()

    _save(checkpoint_path, objective, optimizer, step, elapsed_s, scaler, main)
    if main:
        # The dataset's COCO category ids, so predictions made without its annotation file keep them.
        model.config.category_ids = list(train_set.label_to_category_id)
        model.save_pretrained(out_dir / "model")
        has_processor = save_image_processor(model, config.data, out_dir / "model")
    metrics = evaluate_across_processes(accelerator, model, val_set, config.data.eval_batch_size, None, progress)
    result = {**metrics, "steps": step, "train_s": round(elapsed_s, 1),
              "step_ms": round(1000 * elapsed_s / max(step, 1), 1), "split": val_set.split}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if main:
        _append_jsonl(metrics_path, {"step": step, "elapsed_s": round(elapsed_s, 1), "eval": metrics})
        (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
        sizes = {"train": len(train_set), "val": len(val_set)}
        card = model_card(card_name(out_dir), config, metrics, train_set.root, sizes, list(train_set.id2label.values()),
                          val_set.coco_json.get("info", {}).get("area_ranges"), has_processor, current_command())
        (out_dir / "model" / "README.md").write_text(card)
        # What else ran, kept out of eval.json so that a resumed run's eval.json stays byte-identical.
        _append_jsonl(out_dir / MACHINE_LOAD_NAME, {"steps": [first_step, step], **load.summary()})
    accelerator.wait_for_everyone()
    return result


def _check_finite(loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> None:
    """Stop every process together when any process's loss is not finite (one process
    raising alone would leave the others waiting in the gradient all-reduce)."""
    not_finite = max_over_processes((~torch.isfinite(loss.detach())).float())
    if not_finite.item():
        where = f"{loss.item()}" if not torch.isfinite(loss) else "non-finite in another process"
        raise FloatingPointError(f"loss became {where} at step {step}: terms {_floats(terms)}")


def _save(path: Path, objective, optimizer, step: int, elapsed_s: float, scaler, main: bool) -> None:
    """The main process writes the checkpoint, with every process's RNG states."""
    rng_per_process = gather_object([rng_state()])
    if main:
        save_checkpoint(path, objective.modules, optimizer, step, elapsed_s, rng_per_process, scaler)


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}
