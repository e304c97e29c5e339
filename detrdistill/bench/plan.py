"""A suite's plan: which runs (family, row, seed) with which config, and the names they go by.

The runner (``runner.py``) trains the plan's runs and the report (``report.py``) reads them;
both take the plan from here, so neither imports the other's internals.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detrdistill.bench.suites import FAMILY_PRESETS, SAME_TIME, FamilyPresets, Suite, Variant
from detrdistill.config import ConfigError, RunConfig, load_config
from detrdistill.overrides import apply_overrides

PREDICTIONS = "val_predictions.json.gz"  # COCO results list of the final model on the val split
AP_TABLE = "val_ap_table.npz"  # bootstrap.APTable of those predictions

@dataclass
class PlannedRun:
    """One training run of a suite: a row of one family with one seed."""

    family: str
    variant: Variant
    seed: int
    config: RunConfig
    overrides: dict  # everything set on the student preset, for the record
    teacher_dir: Path | None

    @property
    def name(self) -> str:
        return run_name(self.family, self.variant.key, self.seed)


def run_name(family: str, key: str, seed: int) -> str:
    return f"{family}__{key}__seed{seed}"


def row_step_times_file(plan: SuitePlan, family: str) -> Path:
    """Where a suite with ``interleaved_times`` keeps the family's rows' step times (``runner.row_step_times``)."""
    return plan.results_dir / f"step_ms_{family}.json"


def kept_ap_table(plan: SuitePlan, name: str) -> Path:
    """Where a suite that keeps AP tables (``Suite.keep_ap_tables``) copies run ``name``'s, beside its record."""
    return plan.results_dir / f"{name}.ap.npz"


@dataclass
class SuitePlan:
    """What a suite invocation runs; the report reads the same plan."""

    suite: Suite
    families: list[str]
    seeds: list[int]
    quick: bool
    data: Path
    runs: Path
    results: Path
    teachers: dict[str, Path]  # family -> teacher run directory
    command: str
    presets: Mapping[str, FamilyPresets]
    rows: tuple[str, ...] | None = None  # variant keys to run (None: the suite's, or its --quick subset)
    families_requested: bool = False
    settings: Mapping[str, Any] = field(default_factory=dict)  # ``--set``: on every row's student preset

    @property
    def result_name(self) -> str:
        """Quick and partial invocations report apart, so they never overwrite a full suite's page."""
        parts = [self.suite.name]
        parts += ["quick"] if self.quick else []
        parts += self.families if self.families_requested else []
        parts += ["-".join(self.rows)] if self.rows else []
        parts += [f"set-{_file_safe(key)}={_file_safe(str(value))}" for key, value in self.settings.items()]
        return "_".join(parts)

    @property
    def results_dir(self) -> Path:
        return self.results / self.result_name

    def variants(self) -> tuple[Variant, ...]:
        if self.rows:
            return tuple(v for v in self.suite.variants if v.key in self.rows)
        return self.suite.selected_variants(self.quick)

    def steps(self, family: str) -> int:
        return self.suite.steps_for(family, self.quick)

    def eval_every(self, family: str) -> int:
        return max(1, self.steps(family) // self.suite.checkpoints)


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


def _yaml_value(value: Any) -> str:
    """``value`` as ``--set`` reads it back (a YAML scalar or flow collection, one line)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def suite_command(suite: str, seeds: int, quick: bool, data: Path, runs: Path, families: list[str] | None,
                  teachers: Path, results: Path, rows: list[str] | None = None,
                  settings: Mapping[str, Any] | None = None) -> str:
    """The ``detrdistill bench`` command line that regenerates a suite's results."""
    parts = ["detrdistill", "bench", suite, "--seeds", str(seeds)]
    parts += ["--quick"] if quick else []
    parts += ["--data", str(data), "--runs", str(runs)]
    parts += ["--families", *families] if families else []
    parts += ["--rows", *rows] if rows else []
    for key, value in (settings or {}).items():
        parts += ["--set", f"{key}={_yaml_value(value)}"]
    parts += [] if teachers == Path("runs/presets") else ["--teachers", str(teachers)]
    parts += [] if results == Path("benchmarks/results") else ["--results", str(results)]
    return shlex.join(parts)


def suite_settings(plan: SuitePlan, family: str, seed: int, steps: int | None = None) -> dict:
    """What the suite sets on every run itself, last, so ``--set`` may not change it: its
    budget (``steps``, default the suite's), checkpoints and seed."""
    return {
        "train.steps": plan.steps(family) if steps is None else steps,
        "train.minutes": None,
        "train.eval_every": plan.eval_every(family),
        "train.eval_max_images": plan.suite.eval_max_images,
        "train.seed": seed,
    }


def check_settings(plan: SuitePlan) -> None:
    owned = suite_settings(plan, plan.families[0], 0, 1) if plan.families else {}
    refused = [key for key in plan.settings if key in owned]
    if refused:
        raise ConfigError(f"--set {refused}: a suite sets {', '.join(owned)} on every run itself; use --quick or "
                          "--seeds, or train a single run with detrdistill train/distill")


def run_overrides(plan: SuitePlan, family: str, variant: Variant, seed: int, steps: int | None = None) -> dict:
    """``--set`` settings, then the variant's overrides, then the suite's own settings (``steps``,
    default the suite's times the row's ``steps_factor``)."""
    steps = plan.steps(family) * variant.steps_factor if steps is None else steps
    return {**plan.settings, **variant.overrides, **suite_settings(plan, family, seed, steps)}


def plan_run(plan: SuitePlan, family: str, variant: Variant, seed: int, steps: int | None = None) -> PlannedRun:
    overrides = run_overrides(plan, family, variant, seed, steps)
    where = f"suite {plan.suite.name}, {family}, row {variant.key}"
    config = apply_overrides(load_config(plan.presets[family].student), overrides, where=where)
    return PlannedRun(family, variant, seed, config, overrides, plan.teachers[family] if variant.distilled else None)


def same_time_variant(suite: Suite) -> Variant:
    """The equal-time row: the reference's undistilled baseline, trained longer."""
    reference = suite.variant(suite.reference)
    baseline = suite.variant(reference.baseline)
    return Variant(SAME_TIME, f"{baseline.label}, same time as {reference.label}", baseline.overrides,
                   distilled=False, baseline=baseline.key)


def same_time_steps(reference_steps: int, reference_ms: float, baseline_ms: float) -> int:
    """Steps of the baseline that cost what ``reference_steps`` of the reference run cost, at
    step times measured together (``timing.interleaved_step_ms``)."""
    return max(1, round(reference_steps * reference_ms / baseline_ms))


def make_plan(suite: Suite, families: list[str], seeds: int, quick: bool, data: Path, runs: Path, results: Path,
              teachers: dict[str, Path], command: str, presets: Mapping[str, FamilyPresets] = FAMILY_PRESETS,
              rows: list[str] | None = None, families_requested: bool = False,
              settings: Mapping[str, Any] | None = None) -> SuitePlan:
    plan = SuitePlan(suite, families, list(range(seeds)), quick, Path(data), Path(runs), Path(results), teachers,
                     command, presets, tuple(rows) if rows else None, families_requested, dict(settings or {}))
    check_settings(plan)
    return plan


def check_rows(suite: Suite, rows: list[str] | None) -> None:
    """``--rows`` must name the suite's variants (or the equal-time student, which needs the
    reference row and its baseline), in any order."""
    keys = [v.key for v in suite.variants]
    unknown = [row for row in rows or [] if row not in [*keys, SAME_TIME]]
    if unknown:
        raise ConfigError(f"--rows {unknown}: not rows of suite {suite.name}; it has {keys} and {SAME_TIME}")
    needed = [suite.reference, suite.variant(suite.reference).baseline]
    if rows and SAME_TIME in rows and not set(needed) <= set(rows):
        raise ConfigError(f"--rows {SAME_TIME} is timed against {needed[0]} and {needed[1]}: list both")


def planned_runs(plan: SuitePlan) -> list[PlannedRun]:
    """Every fixed-budget run, seed by seed (a cut-short suite has whole seeds), checked before training."""
    return [plan_run(plan, family, variant, seed)
            for seed in plan.seeds for family in plan.families for variant in plan.variants()
            if variant.runs_for(family)]


