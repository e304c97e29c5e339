"""The per-term gradient diagnostic of a run, as a figure and a table (``detrdistill diagnose RUN``).

Reads the lines ``train.grad_diagnostic_every`` wrote to metrics.jsonl
(``training/grad_diagnostic.py``): per step, each loss component's gradient norm on each
parameter group of the student, and the cosine between every two components there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from detrdistill.analysis.curves import metric_lines
from detrdistill.config import ConfigError
from detrdistill.training.grad_diagnostic import PARAMETER_GROUPS


def gradient_lines(run_dir: str | Path) -> list[dict]:
    """The diagnostic's lines of a run, in step order; a clear error when it recorded none."""
    lines = [line for line in metric_lines(run_dir) if "grad_cosine" in line]
    if not lines:
        raise ConfigError(
            f"{run_dir}/metrics.jsonl has no gradient diagnostic: train with train.grad_diagnostic_every > 0 "
            "(e.g. --set train.grad_diagnostic_every=50, or in the YAML's train: section)"
        )
    return lines


def _groups(lines: list[dict]) -> list[str]:
    present = {g for line in lines for by_group in line["grad_norm"].values() for g in by_group}
    return [g for g in PARAMETER_GROUPS if g in present]


def _as_array(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in values])


def norm_series(lines: list[dict], component: str, group: str) -> np.ndarray:
    """The component's gradient norm on the group at each recorded step (NaN where absent)."""
    return _as_array([line["grad_norm"].get(component, {}).get(group) for line in lines])


def cosine_series(lines: list[dict], pair: str, group: str) -> np.ndarray:
    """The cosine of the pair "a|b" on the group at each recorded step (NaN where undefined)."""
    return _as_array([line["grad_cosine"].get(group, {}).get(pair) for line in lines])


def _components_and_pairs(lines: list[dict]) -> tuple[list[str], list[str]]:
    components = list(dict.fromkeys(c for line in lines for c in line["grad_norm"]))
    pairs = list(dict.fromkeys(p for line in lines for by_pair in line["grad_cosine"].values() for p in by_pair))
    return components, pairs


def summarise(lines: list[dict]) -> dict:
    """Means over the recorded steps: {"steps": n, "norm": {component: {group}},
    "cosine": {pair: {group}}, "grad_ms": mean ms per diagnostic}. NaN-aware (a pair without
    gradient on a group has no cosine there)."""
    groups = _groups(lines)
    components, pairs = _components_and_pairs(lines)

    def mean(values: np.ndarray) -> float | None:
        return None if np.isnan(values).all() else float(np.nanmean(values))

    return {
        "steps": len(lines),
        "norm": {c: {g: mean(norm_series(lines, c, g)) for g in groups} for c in components},
        "cosine": {p: {g: mean(cosine_series(lines, p, g)) for g in groups} for p in pairs},
        "grad_ms": mean(_as_array([line.get("grad_ms") for line in lines])),
    }


def format_summary(summary: dict, step_ms: float | None = None) -> str:
    """Two markdown tables (norms, cosines; one column per parameter group) and the cost line."""
    groups = list(next(iter(summary["norm"].values())))

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [f"Gradient diagnostic, mean over {summary['steps']} recorded steps.", "",
             "| gradient norm | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
    lines += [f"| {c} | " + " | ".join(cell(v[g], 3) for g in groups) + " |" for c, v in summary["norm"].items()]
    lines += ["", "| cosine | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
    lines += [f"| {p.replace('|', ' / ')} | " + " | ".join(cell(v[g], 2) for g in groups) + " |"
              for p, v in summary["cosine"].items()]
    if summary["grad_ms"] is not None:
        cost = f"Cost: {summary['grad_ms']:.0f} ms per diagnosed step"
        if step_ms:
            cost += f", against a mean training step of {step_ms:.0f} ms"
        lines += ["", cost + " (one extra backward pass per component)."]
    return "\n".join(lines)


def plot_gradients(lines: list[dict], title: str = "") -> Figure:
    """Top row: each component's gradient norm over training, one panel per parameter group
    (log scale); bottom row: the pairwise cosines there."""
    groups = _groups(lines)
    steps = [line["step"] for line in lines]
    components, pairs = _components_and_pairs(lines)
    figure = Figure(figsize=(3.0 * len(groups), 5.2), layout="constrained")
    axes = figure.subplots(2, len(groups), squeeze=False)
    # One colour per component and per pair in every panel, so one legend per row reads them all.
    colours = {name: f"C{index % 10}" for index, name in enumerate(components)}
    pair_colours = {name: f"C{index % 10}" for index, name in enumerate(pairs)}
    for column, group in enumerate(groups):
        norm_ax, cos_ax = axes[0, column], axes[1, column]
        for component in components:
            values = norm_series(lines, component, group)
            if np.nansum(values) > 0:
                norm_ax.plot(steps, values, color=colours[component], label=component)
        norm_ax.set(title=group, yscale="log", xlabel="step")
        for pair in pairs:
            values = cosine_series(lines, pair, group)
            if not np.isnan(values).all():
                cos_ax.plot(steps, values, color=pair_colours[pair], label=pair.replace("|", "/"))
        cos_ax.axhline(0.0, color="grey", linewidth=0.6)
        cos_ax.set(ylim=(-1.05, 1.05), xlabel="step")
    axes[0, 0].set_ylabel("gradient norm")
    axes[1, 0].set_ylabel("cosine")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=6, ncol=2)
    figure.suptitle(title or "per-term gradients on the student's parameter groups", fontsize=9)
    return figure
