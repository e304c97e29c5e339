"""What DETRDistill costs per step, and what its Hungarian matching costs at paper scale.

    python benchmarks/distill_cost.py --data data/shapes

1. Step times of each preset pair, interleaved in one process on the same batches:
   student step, teacher forward (no grad), distill step with LD+FD and with LD+FD+AD.
   Ratio = distill step / (student step + teacher forward).
2. All teacher-student matching of one step at paper scale (300 x 300 queries, 6 stages,
   batch 16): the batched cost + one host copy used here against a naive per-matrix loop.
3. The share of a distill step spent in matching at the benchmark scale.

Writes benchmarks/results/distill_cost.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from scipy.optimize import linear_sum_assignment

from detrdistill.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detrdistill.config import LogitsDistillConfig, load_config
from detrdistill.data.collate import collate_detection
from detrdistill.distiller import DETRDistillObjective
from detrdistill.losses import logits as logits_module
from detrdistill.losses.logits import match_teacher_student, soft_class_cost
from detrdistill.matching import HungarianMatcher
from detrdistill.models.build import build_detector
from detrdistill.training.loop import DetectionObjective
from detrdistill.training.prepare import load_datasets

RESULTS = Path(__file__).parent / "results"
PAIRS = [("deformable_teacher", "deformable_student"), ("conditional_teacher", "conditional_student")]


def _timed_step(objective, parameters, batch) -> float:
    started = time.perf_counter()
    loss = sum(objective(batch).values())
    loss.backward()
    for p in parameters:
        p.grad = None
    return time.perf_counter() - started


def step_costs(data: Path, rounds: int) -> dict:
    results = {}
    for teacher_preset, student_preset in PAIRS:
        teacher_config, student_config = load_config(teacher_preset), load_config(student_preset)
        train_set, _ = load_datasets(data, student_config.data)
        torch.manual_seed(0)
        teacher = build_detector(teacher_config.model, train_set.id2label).eval()
        student = build_detector(student_config.model, train_set.id2label).train()
        size = student_config.data.batch_size
        batches = [collate_detection([train_set[i * size + j] for j in range(size)]) for i in range(4)]
        objectives = {"student": DetectionObjective(student, student_config)}
        for name, assignment in (("distill_ld_fd", False), ("distill_all", True)):
            config = load_config(student_preset)
            config.distill.assignment.enabled = assignment
            objectives[name] = DETRDistillObjective(student, teacher, config)
        parameters = list(student.parameters()) + [p for o in objectives.values() if hasattr(o, "heads")
                                                   for p in o.heads.parameters()]
        times = {name: [] for name in [*objectives, "teacher_forward", "matching_in_distill_all"]}
        teacher_adapter = objectives["distill_all"].teacher_adapter
        for round_index in range(rounds + 2):
            batch = batches[round_index % len(batches)]
            for name, objective in objectives.items():
                elapsed = _timed_step(objective, parameters, batch)
                if round_index >= 2:
                    times[name].append(elapsed)
            with torch.no_grad():
                started = time.perf_counter()
                teacher_adapter(batch["pixel_values"], batch["pixel_mask"])
                if round_index >= 2:
                    times["teacher_forward"].append(time.perf_counter() - started)
            if round_index >= 2:
                times["matching_in_distill_all"].append(_matching_time(objectives["distill_all"], parameters, batch))
        median_ms = {name: 1000 * statistics.median(v) for name, v in times.items()}
        base = median_ms["student"] + median_ms["teacher_forward"]
        results[f"{teacher_preset}->{student_preset}"] = {
            "median_ms": {k: round(v, 1) for k, v in median_ms.items()},
            "ratio_ld_fd": round(median_ms["distill_ld_fd"] / base, 3),
            "ratio_all": round(median_ms["distill_all"] / base, 3),
            "matching_share_of_distill_step": round(median_ms["matching_in_distill_all"] / median_ms["distill_all"], 4),
        }
    return results


def _matching_time(objective, parameters, batch) -> float:
    """Seconds spent in Hungarian matching (teacher-GT and teacher-student) during one distill step."""
    spent = [0.0]
    originals = (HungarianMatcher.__call__, logits_module.match_teacher_student)

    def timed(function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            out = function(*args, **kwargs)
            spent[0] += time.perf_counter() - started
            return out
        return wrapper

    HungarianMatcher.__call__ = timed(originals[0])
    logits_module.match_teacher_student = timed(originals[1])
    try:
        _timed_step(objective, parameters, batch)
    finally:
        HungarianMatcher.__call__, logits_module.match_teacher_student = originals
    return spent[0]


def naive_match(teacher_logits, teacher_boxes, student_logits, student_boxes, config) -> list:
    """The per-matrix loop: each image's cost built on its own and copied to the host alone."""
    indices = []
    for image in range(teacher_logits.shape[0]):
        t_logits, t_boxes = teacher_logits[image], teacher_boxes[image]
        s_logits, s_boxes = student_logits[image], student_boxes[image]
        cost = (
            config.class_cost * soft_class_cost(s_logits[None], t_logits[None], "sigmoid")[0]
            + config.bbox_cost * torch.cdist(t_boxes, s_boxes, p=1)
            - config.giou_cost * generalized_box_iou(box_cxcywh_to_xyxy(t_boxes), box_cxcywh_to_xyxy(s_boxes))
        )
        indices.append(linear_sum_assignment(cost.cpu().numpy()))
    return indices


def paper_scale_matching(repeats: int) -> dict:
    stages, batch, queries, classes = 6, 16, 300, 80
    generator = torch.Generator().manual_seed(0)
    config = LogitsDistillConfig()

    def random_predictions():
        logits = torch.randn(stages, batch, queries, classes, generator=generator)
        centers = torch.rand(stages, batch, queries, 2, generator=generator) * 0.8 + 0.1
        sizes = torch.rand(stages, batch, queries, 2, generator=generator) * 0.2 + 0.01
        return logits, torch.cat([centers, sizes], -1)

    (t_logits, t_boxes), (s_logits, s_boxes) = random_predictions(), random_predictions()
    timings = {"batched": [], "naive_loop": []}
    for _ in range(repeats):
        for name in timings:
            started = time.perf_counter()
            for k in range(stages):
                if name == "batched":
                    match_teacher_student(t_logits[k], t_boxes[k], s_logits[k], s_boxes[k], "sigmoid", config)
                else:
                    naive_match(t_logits[k], t_boxes[k], s_logits[k], s_boxes[k], config)
            timings[name].append(time.perf_counter() - started)
    batched_rows = [match_teacher_student(t_logits[0], t_boxes[0], s_logits[0], s_boxes[0], "sigmoid", config)]
    naive_rows = naive_match(t_logits[0], t_boxes[0], s_logits[0], s_boxes[0], config)
    same = all(torch.equal(torch.as_tensor(n[1]), b[1]) for n, b in zip(naive_rows, batched_rows[0], strict=True))
    median_s = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "scale": f"{queries} teacher x {queries} student queries, {stages} stages, batch {batch}, {classes} classes",
        "median_s": {k: round(v, 3) for k, v in median_s.items()},
        "naive_over_batched": round(median_s["naive_loop"] / median_s["batched"], 2),
        "same_assignment": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = {
        "command": f"python benchmarks/distill_cost.py --data {args.data}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": step_costs(args.data, args.rounds),
        "paper_scale_matching": paper_scale_matching(args.repeats),
    }
    (RESULTS / "distill_cost.json").write_text(json.dumps(result, indent=2))
    lines = ["# DETRDistill cost", "", f"Regenerate: `{result['command']}` ({result['threads']} CPU threads, "
             f"torch {result['torch']}; medians of {args.rounds} interleaved rounds, randomly initialised models "
             "of the preset sizes, real batches).", "",
             "| pair | student step ms | teacher fwd ms | LD+FD step ms | all three ms | LD+FD ratio | all ratio | "
             "matching share |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for pair, r in result["steps"].items():
        ms = r["median_ms"]
        lines.append(f"| {pair} | {ms['student']} | {ms['teacher_forward']} | {ms['distill_ld_fd']} | "
                     f"{ms['distill_all']} | {r['ratio_ld_fd']} | {r['ratio_all']} | "
                     f"{100 * r['matching_share_of_distill_step']:.1f}% |")
    m = result["paper_scale_matching"]
    lines += ["", "Ratio = distill step / (student step + teacher forward); targets: <= 1.15 (LD+FD), <= 1.35 (all). "
              "Matching share: Hungarian matching (teacher-GT and teacher-student) inside one all-three step "
              "(target <= 10%).", "", f"## Matching at paper scale ({m['scale']})", "",
              f"- batched cost, one host copy per stage: {m['median_s']['batched']} s per step",
              f"- naive per-matrix loop: {m['median_s']['naive_loop']} s per step "
              f"({m['naive_over_batched']}x the batched time)",
              f"- same assignments: {m['same_assignment']}",
              "", "Most of either is scipy's linear_sum_assignment on 96 matrices of 300 x 300, which runs on "
              "the CPU whatever the device of the model."]
    (RESULTS / "distill_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
