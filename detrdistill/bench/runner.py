"""Run a benchmark suite: teacher, every (seed, family, row) run, the equal-time student, the report.

Layout (``RUNS`` = ``--runs``, ``RESULTS`` = ``--results``):

    TEACHERS/<teacher preset><suffix>/            the family's teacher, trained once if missing
    RUNS/<family>/<row key>-<config digest>/seed<k>/   a run directory (training/run.py)
    RESULTS/<suite>/<family>__<row key>__seed<k>.json  one JSON per run (``run_record``)
    RESULTS/<suite>.md, .json, .png                    the report (report.py, plot.py)

The config digest (the resolved config without its seed, plus the teacher) names a run
directory, so a run shared by two suites (the undistilled student, DETRDistill with the
same budget) is trained once and a changed preset or budget never reuses a stale run.
A finished run (eval.json) is never redone; an interrupted one resumes from its checkpoint.
Each finished run's val predictions are saved beside it (``PREDICTIONS``) with the
per-image matching the bootstrap needs (``AP_TABLE``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from detrdistill.bench.bootstrap import ap_table, load_ap_table, save_ap_table
from detrdistill.bench.commit import commit_files
from detrdistill.bench.plan import (
    AP_TABLE,
    PREDICTIONS,
    PlannedRun,
    SuitePlan,
    check_rows,
    kept_ap_table,
    make_plan,
    plan_run,
    planned_runs,
    row_step_times_file,
    run_name,
    same_time_steps,
    same_time_variant,
    suite_command,
)
from detrdistill.bench.report import write_report
from detrdistill.bench.suites import (
    FAMILY_PRESETS,
    SAME_TIME,
    FamilyPresets,
    Suite,
    check_suite,
    suite_families,
)
from detrdistill.bench.summary import machine_facts
from detrdistill.bench.timing import interleaved_step_ms
from detrdistill.config import RunConfig, config_to_dict, load_config
from detrdistill.inference import predict
from detrdistill.models.build import load_detector
from detrdistill.overrides import apply_overrides
from detrdistill.runs import is_finished, model_digest, train_or_reuse
from detrdistill.training.machine_load import LoadMonitor, read_machine_load
from detrdistill.training.prepare import load_datasets

# `detrdistill bench cost` runs the lead's cost benchmark from the source checkout.
COST_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cost.py"


# Caching decoded images yields bit-identical batches (tests/test_data_coco.py).
SPEED_ONLY_DATA_SETTINGS = ("cache_mb", "check_files")
# Data settings added after runs were recorded, left out of the digest at their default.
LATER_DATA_SETTINGS = {"allow_files_outside_root": False}
# Train settings that only add records to metrics.jsonl, never change the trained weights.
RECORD_ONLY_TRAIN_SETTINGS = ("grad_diagnostic_every",)


def config_digest(config: RunConfig, teacher_dir: Path | None) -> str:
    """Identifies a run across suites: the resolved config without the seed and the settings
    that change speed but not results, plus the teacher's weights (``runs.model_digest``)."""
    values = config_to_dict(config)
    values["train"].pop("seed")
    for speed_only in SPEED_ONLY_DATA_SETTINGS:
        values["data"].pop(speed_only)
    for record_only in RECORD_ONLY_TRAIN_SETTINGS:
        values["train"].pop(record_only)
    for key, default in LATER_DATA_SETTINGS.items():
        if values["data"][key] == default:
            values["data"].pop(key)
    if teacher_dir is None:
        values.pop("distill")  # an undistilled run never reads it
    else:
        # The teacher by its weights, not its directory: a retrained teacher makes new runs.
        values["distill"]["teacher"] = f"weights:{model_digest(teacher_dir)}"
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def run_dir_for(runs: Path, run: PlannedRun, digest: str) -> Path:
    """``RUNS/<family>/<key>-<digest>/seed<k>`` for the run's ``config_digest``, reusing a directory
    of the same digest made by any suite."""
    family_dir = runs / run.family
    existing = sorted(family_dir.glob(f"*-{digest}")) if family_dir.is_dir() else []
    return (existing[0] if existing else family_dir / f"{run.variant.key}-{digest}") / f"seed{run.seed}"


def teacher_dir_for(suite: Suite, family: str, presets: Mapping[str, FamilyPresets], teachers: Path,
                    quick: bool) -> Path:
    """TEACHERS/<teacher preset><suite suffix>[_quick]: the preset's own run unless the suite alters it."""
    short = quick and suite.quick_teacher_steps is not None
    return Path(teachers) / f"{Path(presets[family].teacher).stem}{suite.teacher_suffix}{'_quick' if short else ''}"


def ensure_teacher(suite: Suite, family: str, presets: Mapping[str, FamilyPresets], teachers: Path, data: Path,
                   quick: bool, progress: bool = True) -> Path:
    """The family's teacher run directory: reused when it holds a model, else trained there."""
    preset = presets[family].teacher
    short = quick and suite.quick_teacher_steps is not None
    teacher_dir = teacher_dir_for(suite, family, presets, teachers, quick)
    if (teacher_dir / "eval.json").is_file() or (teacher_dir / "model" / "config.json").is_file():
        return teacher_dir
    steps = suite.quick_teacher_steps if short else suite.teacher_steps_for(family)
    overrides = {**suite.teacher_overrides, **({"train.steps": steps, "train.minutes": None} if steps else {})}
    config = apply_overrides(load_config(preset), overrides, where=f"suite {suite.name}, {family} teacher")
    print(f"[bench] {family}: training the teacher {preset}{' with ' + str(overrides) if overrides else ''} "
          f"into {teacher_dir}")
    train_or_reuse(config, data, teacher_dir, progress=progress)
    return teacher_dir


def save_predictions(run_dir: Path, config: RunConfig, data: Path, progress: bool = True) -> float:
    """Write the final model's val predictions and their AP table beside the run; return that AP."""
    _, val_set = load_datasets(data, config.data)  # the val split exactly as training evaluated it
    predictions_file, table_file = run_dir / PREDICTIONS, run_dir / AP_TABLE
    if predictions_file.is_file():
        results = json.loads(gzip.decompress(predictions_file.read_bytes()))
    else:
        model = load_detector(run_dir / "model").to("cuda" if torch.cuda.is_available() else "cpu")
        results, _ = predict(model, val_set, config.data.eval_batch_size, None, progress)
        temporary = predictions_file.with_name(predictions_file.name + ".tmp")
        temporary.write_bytes(gzip.compress(json.dumps(results).encode()))
        temporary.replace(predictions_file)
    table = ap_table(val_set.coco_json, results)
    save_ap_table(table_file, table)
    return table.ap()


def read_checkpoints(run_dir: Path) -> list[dict]:
    """Evaluations during training from metrics.jsonl: [{step, elapsed_s, AP, ..., num_images}].

    The last evaluation line is the final one on the whole split (eval.json); it is left out,
    and so is a copy of it that a run interrupted right after writing it left behind.
    """
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    evaluations = [line for line in lines if "eval" in line]
    if not evaluations:
        return []
    final = evaluations[-1]
    return [{"step": e["step"], "elapsed_s": e["elapsed_s"], **e["eval"]} for e in evaluations[:-1]
            if (e["step"], e["eval"].get("num_images")) != (final["step"], final["eval"].get("num_images"))]


def _teacher_eval(teacher_dir: Path) -> dict | None:
    """The teacher run's eval.json (None for a bare model directory without one)."""
    eval_file = Path(teacher_dir) / "eval.json"
    return json.loads(eval_file.read_text()) if eval_file.is_file() else None


def run_record(plan: SuitePlan, run: PlannedRun, run_dir: Path, digest: str, evaluation: dict,
               ap_from_predictions: float) -> dict:
    """The JSON written to RESULTS/<suite>/<run>.json."""
    verb = "distill --teacher " + shlex.quote(str(run.teacher_dir)) if run.teacher_dir else "train"
    return {
        "suite": plan.suite.name,
        "family": run.family,
        "variant": run.variant.key,
        "label": run.variant.label,
        "seed": run.seed,
        "distilled": run.teacher_dir is not None,
        "overrides": run.overrides,
        "teacher": str(run.teacher_dir) if run.teacher_dir else None,
        # The teacher's identity and its evaluation, so the report's teacher row is the one these students had.
        "teacher_digest": model_digest(run.teacher_dir) if run.teacher_dir else None,
        "teacher_eval": _teacher_eval(run.teacher_dir) if run.teacher_dir else None,
        "run_dir": str(run_dir),
        "config_digest": digest,
        "machine": machine_facts(),
        "eval": {k: v for k, v in evaluation.items() if k not in ("steps", "train_s", "step_ms")},
        "machine_load": read_machine_load(run_dir),
        "steps": evaluation["steps"],
        "step_ms": evaluation["step_ms"],
        "train_s": evaluation["train_s"],
        "checkpoints": read_checkpoints(run_dir),
        "ap_from_predictions": ap_from_predictions,
        "predictions": str(run_dir / PREDICTIONS),
        "command": plan.command,
        "run_command": f"detrdistill {verb} --config {shlex.quote(str(run_dir / 'config.yaml'))} "
                       f"--data {shlex.quote(str(plan.data))} --out {shlex.quote(str(run_dir))}",
    }


def kept_record(plan: SuitePlan, run: PlannedRun, digest: str) -> tuple[dict, Path] | None:
    """(record, AP table) of the run committed by an earlier invocation of the suite (this page's
    or a partial one's, ``--rows``/``--families``), when the suite keeps AP tables and the record
    is of this very run: the same config digest, which holds the teacher's weights digest. A
    finished run whose run directory did not survive a change of machine."""
    if not plan.suite.keep_ap_tables:
        return None
    pages = [plan.results_dir, plan.results / plan.suite.name, *sorted(plan.results.glob(f"{plan.suite.name}_*"))]
    for page in dict.fromkeys(pages):
        record_file, table = page / f"{run.name}.json", page / f"{run.name}.ap.npz"
        if record_file.is_file() and table.is_file():
            record = json.loads(record_file.read_text())
            if record.get("config_digest") == digest:
                return record, table
    return None


def execute(plan: SuitePlan, run: PlannedRun, progress: bool = True, extra: dict | None = None) -> dict:
    """Train (or reuse) one run, save its predictions once, write and return its result JSON
    (with ``extra`` added to it)."""
    digest = config_digest(run.config, run.teacher_dir)  # hashes the teacher's weights: once per run
    run_dir = run_dir_for(plan.runs, run, digest)
    if not is_finished(run_dir):
        kept = kept_record(plan, run, digest)
        if kept is not None:
            record, table = kept
            print(f"[bench] {run.name}: reusing its committed record in {table.parent} (trained on "
                  f"{record.get('machine', {}).get('cpu', 'another machine')}; run directory {record['run_dir']} gone)")
            if table.parent != plan.results_dir:
                plan.results_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(table, kept_ap_table(plan, run.name))
                write_record(plan.results_dir / f"{run.name}.json", record)
            return record
    evaluation = train_or_reuse(run.config, plan.data, run_dir, teacher=run.teacher_dir, label=run.name,
                                progress=progress)
    load = read_machine_load(run_dir)
    if load and load["shared"]:
        busy = ", ".join(f"{b['name']} (pid {b['pid']}, {b['core_share']:.1f} cores)" for b in load["busy_processes"])
        print(f"[bench] WARNING: {run.name} shared the cores with {busy}: its step time, and any equal-time row "
              "derived from it, is not its own. Run suites alone, or give each process OMP_NUM_THREADS=1.")
    if (run_dir / AP_TABLE).is_file():
        ap_from_predictions = load_ap_table(run_dir / AP_TABLE).ap()
    else:
        ap_from_predictions = save_predictions(run_dir, run.config, plan.data, progress)
    record = {**run_record(plan, run, run_dir, digest, evaluation, ap_from_predictions), **(extra or {})}
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    if plan.suite.keep_ap_tables:
        shutil.copyfile(run_dir / AP_TABLE, kept_ap_table(plan, run.name))
    write_record(plan.results_dir / f"{run.name}.json", record)
    return record


def write_record(path: Path, record: dict) -> None:
    """Whole or absent, never half written: a record may be all that is left of its run."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=2))
    temporary.replace(path)


def equal_time_timing(plan: SuitePlan, family: str, reference_key: str, baseline_key: str) -> dict:
    """The reference row's and its baseline's step times, measured together in one process
    (``timing.py``), so the equal-time budget does not depend on what else ran beside either run.

    Measured once per machine and pair of configs: kept in RUNS/<family>/ beside the runs (a
    step time belongs to the machine), named by the two runs' digests, so a suite run again,
    or another suite with the same rows, gives its equal-time student the same steps and
    reuses it."""
    runs = {key: plan_run(plan, family, plan.suite.variant(key), 0) for key in (reference_key, baseline_key)}
    digests = [config_digest(r.config, r.teacher_dir) for r in runs.values()]
    path = plan.runs / family / f"timing-{digests[0]}-{digests[1]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    monitor = LoadMonitor()  # interleaving evens out load; the record still says what there was
    measured = interleaved_step_ms({key: (r.config, r.teacher_dir) for key, r in runs.items()}, plan.data)
    print(f"[bench] {family}: step times measured interleaved: {reference_key} {measured[reference_key]:.0f} ms, "
          f"{baseline_key} {measured[baseline_key]:.0f} ms")
    timing = {"reference_ms": round(measured[reference_key], 1), "baseline_ms": round(measured[baseline_key], 1),
              "method": "interleaved in one process (bench/timing.py)", "machine_load": monitor.summary()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timing, indent=2))
    return timing


def row_step_times(plan: SuitePlan, family: str) -> dict:
    """Every row's training step time for ``family``, measured interleaved in one process
    (``timing.py``): {"step_ms": {row: ms}, "digests": {row: config digest}, "cpu", ...}.

    Kept in RESULTS/step_ms_<family>.json (a step time belongs to the machine: the record names
    the CPU's instruction set) and measured again when a row's config or the CPU changed."""
    runs = {v.key: plan_run(plan, family, v, 0) for v in plan.variants() if v.runs_for(family)}
    digests = {key: config_digest(r.config, r.teacher_dir) for key, r in runs.items()}
    cpu = torch.backends.cpu.get_cpu_capability()
    path = row_step_times_file(plan, family)
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("digests") == digests and kept.get("cpu") == cpu:
            return kept
    monitor = LoadMonitor()  # interleaving evens out load; the record still says what there was
    measured = interleaved_step_ms({key: (r.config, r.teacher_dir) for key, r in runs.items()}, plan.data)
    print(f"[bench] {family}: step times measured interleaved: "
          + ", ".join(f"{key} {ms:.0f} ms" for key, ms in measured.items()))
    timing = {"step_ms": {key: round(ms, 1) for key, ms in measured.items()}, "digests": digests, "cpu": cpu,
              "machine": machine_facts(), "method": "interleaved in one process (bench/timing.py)",
              "machine_load": monitor.summary()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_record(path, timing)
    return timing


def run_suite(
    suite: Suite, data: Path, runs: Path, results: Path, seeds: int = 3, quick: bool = False,
    families: list[str] | None = None, teachers: Path = Path("runs/presets"), command: str | None = None,
    presets: Mapping[str, FamilyPresets] = FAMILY_PRESETS, progress: bool = True, report_only: bool = False,
    resamples: int = 1000, rows: list[str] | None = None, settings: Mapping[str, Any] | None = None,
    commit: bool = False,
) -> Path:
    """Run ``suite`` (resuming what exists) and write its report; return the report's path.

    ``settings`` (``--set``) are set on every row's student preset before the row's own
    overrides; the page is named after them, so it never overwrites the suite's own page.
    ``commit``: each run's result files are committed to git as soon as they are written, and
    the page at the end (``commit.py``)."""
    check_suite(suite)
    check_rows(suite, rows)
    chosen = suite_families(suite, families, quick, presets)
    command = command or suite_command(suite.name, seeds, quick, data, runs, families, teachers, results, rows,
                                       settings)
    teacher_dirs = {family: teacher_dir_for(suite, family, presets, teachers, quick) for family in chosen}
    plan = make_plan(suite, chosen, seeds, quick, data, runs, results, teacher_dirs, command, presets, rows,
                     families_requested=bool(families), settings=settings)
    needs_teacher = suite.show_teacher or any(v.distilled for v in plan.variants())
    runs_to_do = planned_runs(plan)  # validates every row's overrides before anything trains
    if not report_only:
        if needs_teacher:
            for family in chosen:
                teacher_dir = ensure_teacher(suite, family, presets, teachers, plan.data, quick, progress)
                if commit:  # a teacher kept in the repository (not under runs/) makes its runs reusable elsewhere
                    commit_files([teacher_dir], f"Results: the {family} teacher of {plan.result_name} "
                                                f"({teacher_dir}, weights {model_digest(teacher_dir)})")
        baseline_key = suite.variant(suite.reference).baseline
        finished: dict[str, dict] = {}
        timings: dict[str, dict] = {}
        for run in runs_to_do:
            finished[run.name] = execute(plan, run, progress)
            if commit:
                record = finished[run.name]
                commit_files(result_files(plan, run.name),
                             f"Results: {plan.result_name} {run.name}, AP {100 * record['eval']['AP']:.1f} "
                             f"({record['steps']} steps, {record['step_ms']} ms a step)")
            # The equal-time student of this family and seed, as soon as its two inputs exist.
            reference = finished.get(run_name(run.family, suite.reference, run.seed))
            baseline = finished.get(run_name(run.family, baseline_key, run.seed))
            same_time = run_name(run.family, SAME_TIME, run.seed)
            wanted = suite.equal_time and (not rows or SAME_TIME in rows)
            if reference and baseline and same_time not in finished and wanted:
                if run.family not in timings:
                    timings[run.family] = equal_time_timing(plan, run.family, suite.reference, baseline_key)
                timing = timings[run.family]
                steps = same_time_steps(reference["steps"], timing["reference_ms"], timing["baseline_ms"])
                same_time_run = plan_run(plan, run.family, same_time_variant(suite), run.seed, steps)
                finished[same_time] = execute(plan, same_time_run, progress, {"equal_time_timing": timing})
                if commit:
                    commit_files(result_files(plan, same_time), f"Results: {plan.result_name} {same_time}")
        for family in chosen if suite.interleaved_times else ():
            row_step_times(plan, family)
            if commit:
                commit_files([row_step_times_file(plan, family)],
                             f"Results: {plan.result_name} {family} step times, measured interleaved")
    page = write_report(plan, resamples=resamples)
    if commit:
        commit_files([page.with_suffix(suffix) for suffix in (".md", ".json", ".png")],
                     f"Results: the {plan.result_name} page rebuilt from its records")
    return page


def result_files(plan: SuitePlan, name: str) -> list[Path]:
    """The files that stand for run ``name`` in the results: its JSON, and its AP table if kept."""
    return [plan.results_dir / f"{name}.json", *([kept_ap_table(plan, name)] if plan.suite.keep_ap_tables else [])]
