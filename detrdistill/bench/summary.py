"""A suite's numbers: per row the mean and std over seeds, gains with paired bootstrap
intervals, the teacher, the targets checked; the dict behind RESULTS/<suite>.json.

Everything is computed from the per-run JSONs (RESULTS/<suite>/*.json) and the AP tables
saved beside each run (bootstrap.py), so ``detrdistill bench SUITE --report-only`` rebuilds
the page without training.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detrdistill.bench.bootstrap import check_same_images, load_ap_table, paired_gain, resample_counts, resampled_aps
from detrdistill.bench.plan import (
    AP_TABLE,
    SuitePlan,
    kept_ap_table,
    row_step_times_file,
    run_name,
    same_time_variant,
)
from detrdistill.bench.suites import SAME_TIME, TEACHER, Target, Variant
from detrdistill.evaluate import AP_KEYS
from detrdistill.runs import model_digest

BOOTSTRAP_SEED = 0


def machine_facts() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "transformers": transformers.__version__, "python": platform.python_version()}


def load_records(plan: SuitePlan) -> dict[str, dict[str, list[dict]]]:
    """{family: {row key: [run JSON per seed found]}} for the plan's rows, the equal-time row last."""
    keys = [v.key for v in plan.variants()] + [SAME_TIME]
    records: dict[str, dict[str, list[dict]]] = {}
    for family in plan.families:
        records[family] = {}
        for key in keys:
            found = [plan.results_dir / f"{run_name(family, key, seed)}.json" for seed in plan.seeds]
            records[family][key] = [json.loads(path.read_text()) for path in found if path.is_file()]
    return records


def points(value: float) -> str:
    """An AP difference in points with its sign; a rounded -0.0 shows as +0.0."""
    return f"{round(100 * value, 1) + 0.0:+.1f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def row_stats(runs: list[dict]) -> dict:
    """Mean and sample std over seeds of each AP key, step time, steps and training time."""
    mean, std = {}, {}
    for key in AP_KEYS:
        mean[key], std[key] = _mean_std([r["eval"].get(key) for r in runs])
    for key in ("step_ms", "steps", "train_s"):
        mean[key], std[key] = _mean_std([r[key] for r in runs])
    return {"seeds": [r["seed"] for r in runs], "mean": mean, "std": std}


class GainEstimator:
    """Paired bootstrap gains between rows, resampling each run's AP once (shared resamples)."""

    def __init__(self, resamples: int, plan: SuitePlan | None = None):
        self.resamples, self.plan = resamples, plan
        self.counts = None
        self.tables, self.samples = {}, {}

    def _table(self, record: dict):
        """The run's AP table: beside the run, else the copy beside its record (``keep_ap_tables``)."""
        key = record["run_dir"]
        if key not in self.tables:
            path = Path(record["run_dir"]) / AP_TABLE
            if not path.is_file() and self.plan is not None:
                path = kept_ap_table(self.plan, run_name(record["family"], record["variant"], record["seed"]))
            self.tables[key] = load_ap_table(path) if path.is_file() else None
        return self.tables[key]

    def _samples(self, record: dict) -> np.ndarray:
        key = record["run_dir"]
        if key not in self.samples:
            self.samples[key] = resampled_aps(self._table(record), self.counts)
        return self.samples[key]

    def gain(self, runs_a: list[dict], runs_b: list[dict]) -> dict | None:
        """Gain of A over B on the seeds both have; None without runs or saved AP tables."""
        seeds = sorted({r["seed"] for r in runs_a} & {r["seed"] for r in runs_b})
        pairs = [(next(r for r in runs_a if r["seed"] == s), next(r for r in runs_b if r["seed"] == s)) for s in seeds]
        if not pairs:
            return None
        per_seed = [a["eval"]["AP"] - b["eval"]["AP"] for a, b in pairs]
        result = {"seeds": seeds, "per_seed": per_seed,
                  "std": statistics.stdev(per_seed) if len(per_seed) > 1 else float("nan")}
        tables = [self._table(r) for pair in pairs for r in pair]
        if any(t is None for t in tables):
            return {**result, "gain": statistics.fmean(per_seed), "low": None, "high": None,
                    "note": "no saved AP table for some runs: no interval"}
        check_same_images(tables, [r["run_dir"] for pair in pairs for r in pair])
        if self.counts is None:
            self.counts = resample_counts(len(tables[0].image_ids), self.resamples, BOOTSTRAP_SEED)
        interval = paired_gain([self._samples(a) for a, _ in pairs], [self._samples(b) for _, b in pairs],
                               self.counts, full_a=[a["eval"]["AP"] for a, _ in pairs],
                               full_b=[b["eval"]["AP"] for _, b in pairs])
        return {**result, **interval.to_dict()}


def check_target(target: Target, rows: dict[str, list[dict]], labels: dict[str, str],
                 teacher_ap: float | None = None, gain_of: Callable[[str, str], dict | None] | None = None) -> dict:
    """MET (True), NOT MET (False) or not checked (None: a row was not run) for one family,
    with the numbers behind it. ``teacher_ap`` stands for the ``TEACHER`` row; ``gain_of(winner,
    loser)`` gives the paired bootstrap gain (``GainEstimator.gain``) that ``target.interval`` checks."""
    missing = [labels.get(k, k) for k in target.winners + target.losers
               if (teacher_ap is None if k == TEACHER else not rows.get(k))]
    if missing:
        return {"met": None, "detail": f"rows not run: {', '.join(missing)}"}
    met, details = True, []
    for winner in target.winners:
        for loser in target.losers:
            if loser == TEACHER:
                by_seed = {r["seed"]: teacher_ap for r in rows[winner]}
            else:
                by_seed = {r["seed"]: r["eval"]["AP"] for r in rows[loser]}
            per_seed = [r["eval"]["AP"] - by_seed[r["seed"]] for r in rows[winner] if r["seed"] in by_seed]
            gain = statistics.fmean(r["eval"]["AP"] for r in rows[winner]) - statistics.fmean(by_seed.values())
            if target.max_gain is not None:
                ok = gain < target.max_gain
            else:
                ok = gain >= target.min_gain if target.min_gain is not None else gain > 0
            text = f"{labels.get(winner, winner)} - {labels.get(loser, loser)} = {points(gain)} AP"
            if target.std_multiple:
                std = statistics.stdev(per_seed) if len(per_seed) > 1 else float("nan")
                ok = ok and not math.isnan(std) and gain > target.std_multiple * std
                text += (f" (std of the per-seed gain {100 * std:.1f} over {len(per_seed)} seeds)" if len(per_seed) > 1
                         else " (one seed: no std, so the std condition cannot hold)")
            if target.interval:
                paired = gain_of(winner, loser) if gain_of and loser != TEACHER else None
                if paired is None or paired.get("low") is None:
                    ok, text = False, text + " (no bootstrap interval: the runs' AP tables are missing)"
                else:
                    ok = ok and paired["low"] > 0
                    text += f", 95% interval [{points(paired['low'])}, {points(paired['high'])}]"
            met = met and ok
            details.append(text + ("" if ok else " ✗"))
    return {"met": met, "detail": "; ".join(details)}


class MixedTeachersError(ValueError):
    """A family's result records were distilled from more than one teacher."""


def one_teacher(plan: SuitePlan, family: str, rows: dict[str, list[dict]]) -> tuple[str | None, dict]:
    """The weights digest and evaluation of the one teacher behind ``family``'s distilled records.

    Records name their teacher by a digest of its weights; two digests in one family, or
    records of another teacher than the one now in the teacher directory, are refused, so a
    page never puts one teacher's students beside another's (or under its teacher row).
    Records from before digests were kept (none) fall back to the teacher directory's eval.json.
    """
    distilled = [r for runs in rows.values() for r in runs if r.get("distilled")]
    by_digest: dict[str, list[str]] = {}
    for record in distilled:
        if record.get("teacher_digest"):
            by_digest.setdefault(record["teacher_digest"], []).append(f"{record['variant']} seed {record['seed']}")
    teacher_dir = plan.teachers[family]
    try:
        now = model_digest(teacher_dir)
    except FileNotFoundError:  # a report rebuilt where the teacher's run directory is gone
        now = None
    if len(by_digest) > 1 or (now and by_digest and now not in by_digest):
        found = "; ".join(f"teacher {d}: {', '.join(names)}" for d, names in by_digest.items())
        raise MixedTeachersError(
            f"{plan.results_dir}: {family}'s records come from other teachers than one ({found}; the teacher in "
            f"{teacher_dir} is {now or 'absent'}). Rerun the suite (runs of a changed teacher are new runs) or delete "
            "the records of the stale teacher.")
    recorded = [r["teacher_eval"] for r in distilled if r.get("teacher_eval")]
    if recorded:
        return next(iter(by_digest), None), recorded[0]
    teacher_eval = teacher_dir / "eval.json"
    return next(iter(by_digest), None), json.loads(teacher_eval.read_text()) if teacher_eval.is_file() else {}


def build_summary(plan: SuitePlan, resamples: int = 1000) -> dict:
    """Everything the page shows, as plain data (written to RESULTS/<suite>.json)."""
    suite = plan.suite
    records = load_records(plan)
    estimator = GainEstimator(resamples, plan)
    same_time = same_time_variant(suite)
    summary = {"suite": suite.name, "title": suite.title, "command": plan.command, "machine": machine_facts(),
               "data": str(plan.data), "seeds": plan.seeds, "quick": plan.quick, "resamples": resamples,
               "paper_source": suite.paper_source, "families": {}, "targets": [], "shared_cores": []}
    for family in plan.families:
        rows = records[family]
        summary["shared_cores"] += shared_core_runs(rows)
        variants: list[Variant] = [*plan.variants(), same_time]
        labels = {v.key: v.label for v in [*suite.variants, same_time]}  # rows left out by --quick too
        section = {"steps": plan.steps(family), "eval_every": plan.eval_every(family), "teacher": None, "rows": []}
        digest, teacher = one_teacher(plan, family, rows)
        section["teacher_digest"] = digest
        if suite.show_teacher:
            section["teacher"] = {"dir": str(plan.teachers[family]), "eval": teacher,
                                  "paper": suite.paper_teacher.get(family, suite.paper_teacher.get("*"))}
        for variant in variants:
            runs = rows.get(variant.key, [])
            if not runs:
                continue
            baseline = variant.baseline
            paper = variant.paper_ap(family)
            baseline_paper = suite.variant(baseline).paper_ap(family) if baseline and variant.key != SAME_TIME else None
            section["rows"].append({
                "key": variant.key, "label": variant.label, "baseline": baseline,
                **row_stats(runs),
                "gain": estimator.gain(runs, rows.get(baseline, [])) if baseline else None,
                "paper": paper,
                "paper_gain": None if paper is None or baseline_paper is None else round(paper - baseline_paper, 1),
                "checkpoints": checkpoints_over_seeds(runs),
            })
        section["interleaved"] = add_interleaved_costs(plan, family, section["rows"], rows)
        reference = rows.get(suite.reference, [])
        section["equal_time"] = estimator.gain(reference, rows.get(SAME_TIME, [])) if reference else None
        same_time_runs = rows.get(SAME_TIME, [])
        interleaved = [r for r in same_time_runs if "equal_time_timing" in r]
        section["equal_time_interleaved"] = bool(same_time_runs) and len(interleaved) == len(same_time_runs)
        summary["families"][family] = section
        teacher_ap = teacher.get("AP") if teacher else None
        labels[TEACHER] = "teacher"
        def gain_of(winner: str, loser: str, rows: dict = rows) -> dict | None:
            return estimator.gain(rows[winner], rows[loser])

        for target in (t for t in suite.targets if not t.families or family in t.families):
            checked = check_target(target, rows, labels, teacher_ap, gain_of)
            summary["targets"].append({"family": family, "text": target.text, "source": target.source, **checked})
    return summary


def add_interleaved_costs(plan: SuitePlan, family: str, section_rows: list[dict],
                          records: dict[str, list[dict]]) -> dict | None:
    """Give each row of a suite with ``interleaved_times`` its step time measured interleaved
    (``runner.row_step_times``) and its cost, steps x that time ("interleaved_ms", "cost_min",
    and "cost_min" at each checkpoint), when the measurement is of the row's own config; return
    the measurement's facts (None without one)."""
    path = row_step_times_file(plan, family)
    if not plan.suite.interleaved_times or not path.is_file():
        return None
    timing = json.loads(path.read_text())
    for row in section_rows:
        ms = timing["step_ms"].get(row["key"])
        digests = {r.get("config_digest") for r in records.get(row["key"], [])}
        if ms is None or digests != {timing["digests"].get(row["key"])}:
            continue  # measured for another config of the row: no cost rather than a wrong one
        row["interleaved_ms"] = ms
        row["cost_min"] = row["mean"]["steps"] * ms / 60000
        for point in row["checkpoints"]:
            point["cost_min"] = point["step"] * ms / 60000
    return {"cpu": timing["cpu"], "machine_load": timing.get("machine_load"), "file": str(path)}


def shared_core_runs(rows: dict[str, list[dict]]) -> list[str]:
    """"run name: busy process, ..." for each run whose training shared the cores (its
    ``machine_load``; runs recorded before it existed have none and are not listed)."""
    shared = []
    for runs in rows.values():
        for record in runs:
            load = record.get("machine_load") or {}
            if load.get("shared"):
                busy = ", ".join(f"{b['name']} ({b['core_share']:.1f} cores)" for b in load["busy_processes"][:3])
                shared.append(f"{record['family']}/{record['variant']} seed {record['seed']}: {busy}")
    return shared


def checkpoints_over_seeds(runs: list[dict]) -> list[dict]:
    """Mean over seeds of AP, and median of training time, at each checkpoint step that every seed reached.

    The median because a run that shared the cores with other work has inflated times; one such
    seed out of three would otherwise drag its row's curve sideways (AP is unaffected)."""
    by_step: dict[int, list[dict]] = {}
    for run in runs:
        for point in run["checkpoints"]:
            by_step.setdefault(point["step"], []).append(point)
    return [{"step": step, "AP": statistics.fmean(p["AP"] for p in points),
             "elapsed_s": statistics.median(p["elapsed_s"] for p in points), "seeds": len(points)}
            for step, points in sorted(by_step.items()) if len(points) == len(runs)]
