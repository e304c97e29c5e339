"""The `gpu` presets on one GPU: step cost at paper size, then a short teacher -> student -> DETRDistill run.

    python benchmarks/gpu_preset.py --data data/shapes --runs runs/gpu

Meant for a machine with a GPU (the `device` tool, where one is lent); `--smoke` shrinks the
models and budgets so the whole script can be checked on a CPU in a minute. Writes
benchmarks/results/gpu.json and gpu.md, naming the card. Each part's numbers are written as
soon as it ends, so a run cut short still leaves what it measured.

1. Step cost: each family's gpu preset pair (paper-size models, random init, real batches of
   the preset's global batch, 512 px, bf16 autocast): median time per step and peak GPU
   memory (torch.cuda.max_memory_allocated) of a student step, a teacher forward and a
   DETRDistill step (LD + FD + AD); and the teacher-student matching of one step at paper
   scale on this machine's CPU (scipy's linear_sum_assignment runs there whatever the device).
2. A short run of the Conditional DETR pair (R101 -> R50) through the real CLI: the teacher
   for --teacher-minutes, then the undistilled student and DETRDistill for --student-steps
   each (same steps: distillation buys accuracy per step). Backbone pretraining is cut to
   --pretrain-steps and warm-up to 100 steps; everything else is the preset's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers
from accelerate.utils import send_to_device

from detrdistill.config import GPU_FAMILY_PRESETS, load_config, save_config
from detrdistill.data.collate import collate_detection
from detrdistill.distiller import DETRDistillObjective
from detrdistill.models.build import build_detector
from detrdistill.overrides import apply_overrides
from detrdistill.precision import autocast
from detrdistill.training.loop import DetectionObjective
from detrdistill.training.prepare import load_datasets

sys.path.insert(0, str(Path(__file__).parent))
from cost import paper_scale_matching  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PAIRS = {family: (p.teacher, p.student) for family, p in GPU_FAMILY_PRESETS.items()}
RUN_FAMILY = "conditional_detr"
# --smoke: every preset shrunk to a few-second CPU model; the point is to exercise the script.
SMOKE = {
    "model.d_model": 32, "model.encoder_layers": 1, "model.decoder_layers": 2,
    "model.encoder_attention_heads": 4, "model.decoder_attention_heads": 4,
    "model.encoder_ffn_dim": 64, "model.decoder_ffn_dim": 64, "model.num_queries": 10,
    "model.backbone.layer_type": "basic", "model.backbone.embedding_size": 8,
    "model.backbone.hidden_sizes": [8, 16, 32, 64], "model.backbone.depths": [1, 1, 1, 1],
    "data.image_size": 64, "data.batch_size": 2, "data.eval_batch_size": 8, "data.num_workers": 0,
    "backbone_pretraining.batch_size": 8, "backbone_pretraining.crop_size": 32, "train.mixed_precision": "no",
}
STEP_KINDS = ("student", "teacher_forward", "distill")


def preset_config(preset: str, smoke: bool, overrides: dict | None = None):
    config = load_config(preset)
    return apply_overrides(config, {**(SMOKE if smoke else {}), **(overrides or {})}, where=preset)


def card() -> dict:
    facts = {"torch": torch.__version__, "transformers": transformers.__version__,
             "cpu": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        facts |= {"device": torch.cuda.get_device_name(0),
                  "device_memory_gib": round(properties.total_memory / 2**30, 1)}
    else:
        facts["device"] = "cpu"
    return facts


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def build_pair(data: Path, family: str, device: torch.device, overrides: dict, num_batches: int):
    """One family's gpu preset pair (random init, seed 0) on ``device``, with ``overrides`` on both presets.

    Returns (student config, DETRDistill objective, trainable parameters, ``num_batches`` real
    training batches of the preset's size, already on ``device``).
    """
    teacher_preset, student_preset = PAIRS[family]
    student_config = apply_overrides(load_config(student_preset), overrides, where=student_preset)
    teacher_config = apply_overrides(load_config(teacher_preset), overrides, where=teacher_preset)
    train_set, _ = load_datasets(data, student_config.data)
    torch.manual_seed(0)
    teacher = build_detector(teacher_config.model, train_set.id2label).eval().to(device)
    student = build_detector(student_config.model, train_set.id2label).train().to(device)
    distill = DETRDistillObjective(student, teacher, student_config)
    distill.heads.to(device)
    size = student_config.data.batch_size
    batches = [send_to_device(collate_detection([train_set[i * size + j] for j in range(size)]), device)
               for i in range(num_batches)]
    return student_config, distill, [*student.parameters(), *distill.heads.parameters()], batches


def pair_step_cost(data: Path, family: str, rounds: int, smoke: bool, device: torch.device) -> dict:
    """Median ms and peak GiB per step kind of one family's gpu preset pair (models at random init).

    Each kind runs its rounds back to back (2 warm-up steps first) so that its peak memory is
    its own. A step is forward and backward; there is no optimiser, the gradients are dropped.
    """
    student_config, distill, parameters, batches = build_pair(data, family, device, SMOKE if smoke else {}, 2)
    precision = student_config.train.mixed_precision
    objectives = {"student": DetectionObjective(distill.student, student_config), "distill": distill}

    def step(kind: str, batch: dict) -> None:
        if kind == "teacher_forward":
            with torch.no_grad(), autocast(precision, device):
                distill.teacher_adapter(batch["pixel_values"], batch["pixel_mask"])
            return
        with autocast(precision, device):
            loss = sum(objectives[kind](batch).values())
        loss.backward()
        for p in parameters:
            p.grad = None

    data_config = student_config.data
    result = {"batch": data_config.batch_size, "image_size": data_config.image_size, "precision": precision}
    for kind in STEP_KINDS:
        _synchronize(device)
        _reset_peak(device)
        times = []
        for index in range(rounds + 2):
            started = time.perf_counter()
            step(kind, batches[index % len(batches)])
            _synchronize(device)
            if index >= 2:
                times.append(time.perf_counter() - started)
        result[kind] = {"median_ms": round(1000 * statistics.median(times), 1), "peak_gib": _peak_gib(device)}
    base = result["student"]["median_ms"] + result["teacher_forward"]["median_ms"]
    result["distill_ratio"] = round(result["distill"]["median_ms"] / base, 2)
    return result


def short_run(data: Path, runs: Path, args: argparse.Namespace, records: dict, on_record) -> dict:
    """Teacher, then student and DETRDistill, through the CLI, into ``records`` (name -> record).

    ``on_record()`` runs after each run, so a cut-short lease keeps the runs that finished;
    finished runs (an eval.json) are not redone."""
    teacher_preset, student_preset = PAIRS[RUN_FAMILY]
    common = {"backbone_pretraining.steps": args.pretrain_steps, "train.eval_every": 0,
              "train.checkpoint_every": 10**6, "train.warmup_steps": 100}
    teacher_budget = {"train.minutes": args.teacher_minutes, "train.steps": args.teacher_steps}
    student_budget = {"train.steps": args.student_steps, "train.minutes": args.student_minutes_cap}
    plan = {"teacher": ("train", teacher_preset, teacher_budget),
            "student": ("train", student_preset, student_budget),
            "detrdistill": ("distill", student_preset, student_budget)}
    runs.mkdir(parents=True, exist_ok=True)
    for name, (verb, preset, budget) in plan.items():
        out = runs / name
        config_path = runs / f"{name}.yaml"
        save_config(preset_config(preset, args.smoke, {**common, **budget}), config_path)
        command = [sys.executable, "-m", "detrdistill.cli", verb, "--config", str(config_path), "--data", str(data),
                   "--out", str(out), "--backbone-cache", str(runs / "backbones")]
        command += ["--teacher", str(runs / "teacher")] if verb == "distill" else []
        started = time.perf_counter()
        if not (out / "eval.json").is_file():
            subprocess.run(command, check=True)
        evaluation = json.loads((out / "eval.json").read_text())
        init = json.loads((out / "init.json").read_text())
        records[name] = {
            "preset": preset, "budget": budget, "command": " ".join(["python -m detrdistill.cli"] + command[3:]),
            "wall_s": round(time.perf_counter() - started, 1), "backbone_pretraining_s": init.get("load_or_pretrain_s"),
            **{k: evaluation.get(k) for k in ("AP", "AP50", "AP75", "steps", "step_ms", "train_s", "peak_memory_gib")},
        }
        print(f"[gpu] {name}: AP {evaluation['AP']:.3f} after {evaluation['steps']} steps", flush=True)
        on_record()
    return records


def report(result: dict) -> str:
    c = result["card"]
    lines = [f"# The `gpu` presets on {c['device']}", "",
             f"Regenerate: `{result['command']}` (on a machine with a GPU; `--smoke` checks the script on a CPU).", "",
             f"Card: {c['device']}" + (f", {c['device_memory_gib']} GiB" if "device_memory_gib" in c else "")
             + f"; torch {c['torch']}, transformers {c['transformers']}; host CPU {c['cpu']}. "
             "Data: the embedded shapes (128-px images, upscaled to the presets' 512 px by the loader).", ""]
    step_cost = {family: result[f"step_cost_{family}"] for family in PAIRS if f"step_cost_{family}" in result}
    if step_cost:
        lines += ["## Step cost at paper size", "",
                  "Random-init models of the preset sizes (d_model 256, 6/6 stages, 300 queries, ResNet-101 teacher, "
                  f"ResNet-50 student), real batches, medians of {result['rounds']} steps after 2 warm-up steps. "
                  "Peak: torch.cuda.max_memory_allocated over that kind's steps, models included. "
                  "Ratio: DETRDistill step / (student step + teacher forward).", "",
                  "| pair | batch | precision | student ms | teacher fwd ms | DETRDistill ms | ratio | "
                  "peak GiB student / teacher fwd / DETRDistill |",
                  "|---|---:|---|---:|---:|---:|---:|---|"]
        for family, r in step_cost.items():
            peaks = " / ".join(str(r[k]["peak_gib"]) for k in STEP_KINDS)
            lines.append(f"| {' -> '.join(PAIRS[family])} | {r['batch']} | {r['precision']} | "
                         f"{r['student']['median_ms']} | {r['teacher_forward']['median_ms']} | "
                         f"{r['distill']['median_ms']} | {r['distill_ratio']} | {peaks} |")
    if "paper_scale_matching" in result:
        m = result["paper_scale_matching"]
        lines += ["", f"Teacher-student matching of one step at paper scale ({m['scale']}) on the host CPU: "
                  f"{m['median_s']['batched']} s (scipy linear_sum_assignment; same on any GPU)."]
    if result.get("short_run"):
        lines += ["", "## A short run: Conditional DETR R101 teacher -> R50 student", "",
                  "Budgets far below the paper's (minutes, not epochs): these APs show the presets train end to end "
                  "on this card, not what they reach.", "",
                  "| run | budget | steps | step ms | AP | AP50 | peak GiB | wall s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in result["short_run"].items():
            budget = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in r["budget"].items() if v is not None)
            lines.append(f"| {name} | {budget} | {r['steps']} | {r['step_ms']} | {100 * r['AP']:.1f} | "
                         f"{100 * r['AP50']:.1f} | {r['peak_memory_gib']} | {r['wall_s']} |")
        lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in result["short_run"].values())]
    for name, trace in result.get("failed", {}).items():
        lines += ["", f"**{name} failed:**", "", "```", trace.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--runs", type=Path, default=Path("runs/gpu"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per step kind")
    parser.add_argument("--teacher-minutes", type=float, default=2.5)
    parser.add_argument("--teacher-steps", type=int, default=20000)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--student-minutes-cap", type=float, default=2.0)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--skip", nargs="*", default=[], choices=["cost", "matching", "run"])
    parser.add_argument("--smoke", action="store_true", help="tiny models and budgets: check the script on a CPU")
    args = parser.parse_args()
    if args.smoke:
        args.teacher_steps, args.student_steps, args.pretrain_steps, args.rounds = 6, 4, 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    command = "python benchmarks/gpu_preset.py " + " ".join(sys.argv[1:])
    result = {"command": command.strip(), "card": card(), "rounds": args.rounds}
    args.results.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        (args.results / "gpu.json").write_text(json.dumps(result, indent=2))
        (args.results / "gpu.md").write_text(report(result))

    failed = []

    def part(name: str, measure) -> None:
        """Record one part; a failure is printed and recorded, and the later parts still run."""
        try:
            result[name] = measure()
        except Exception:  # one lease of a GPU should yield every part that works
            traceback.print_exc()
            failed.append(name)
            result.setdefault("failed", {})[name] = traceback.format_exc(limit=3)
        write()

    if "cost" not in args.skip:
        for family in PAIRS:
            part(f"step_cost_{family}", lambda family=family: pair_step_cost(args.data, family, args.rounds,
                                                                             args.smoke, device))
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the last pair's models are gone; its cached blocks need not stay
    if "matching" not in args.skip:
        part("paper_scale_matching", lambda: paper_scale_matching(repeats=2))
    if "run" not in args.skip:
        result["short_run"] = {}
        part("short_run", lambda: short_run(args.data, args.runs, args, result["short_run"], write))
    print(report(result))
    if failed:
        sys.exit(f"failed parts: {', '.join(failed)} (tracebacks above and in gpu.json)")


if __name__ == "__main__":
    main()
