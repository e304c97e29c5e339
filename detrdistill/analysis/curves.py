"""Training curves from a run's ``metrics.jsonl``: loss terms per step and the evaluations."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

# Keys of a log line that are not loss terms.
NOT_TERMS = {"step", "loss", "lr", "step_ms", "elapsed_s", "eval", "grad_total_norm"}


def metric_lines(run_dir: str | Path) -> list[dict]:
    """Every line of a run's metrics.jsonl, in step order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run directory written by training")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(log lines, evaluation lines) of a run's metrics.jsonl, in step order (the gradient
    diagnostic's lines are those with "grad_cosine": ``analysis/gradients.py``)."""
    lines = metric_lines(run_dir)
    return [r for r in lines if "loss" in r], [r for r in lines if "eval" in r]


def plot_curves(runs: dict[str, str | Path]) -> Figure:
    """Left: total loss per step of each run (log scale); right: the loss terms of the first
    run; evaluations (AP) are listed in the legend."""
    figure = Figure(figsize=(10, 3.2), layout="constrained")
    total, terms = figure.subplots(1, 2)
    for name, run_dir in runs.items():
        logs, evals = read_metrics(run_dir)
        final = f" (AP {100 * evals[-1]['eval']['AP']:.1f})" if evals else ""
        total.plot([r["step"] for r in logs], [r["loss"] for r in logs], label=name + final)
    total.set(xlabel="step", ylabel="training loss", yscale="log")
    total.legend(fontsize=7)
    first_name, first = next(iter(runs.items()))
    logs, _ = read_metrics(first)
    for key in [k for k in logs[0] if k not in NOT_TERMS]:
        terms.plot([r["step"] for r in logs], [r.get(key, float("nan")) for r in logs], label=key)
    terms.set(xlabel="step", ylabel="weighted term", yscale="log", title=f"loss terms: {first_name}")
    terms.legend(fontsize=6, ncol=2)
    return figure
