"""Read the benchmark results (``benchmarks/results/*.md`` and ``*.json``) for tables and plots.

Suites write a Markdown page and a JSON file each; their layouts differ, so plots use one
generic rule: every JSON object holding an ``"AP"`` number is a row, named by its path in
the file (``rows/DETRDistill student``). Files that are missing or unreadable are skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.figure import Figure

DEFAULT_RESULTS = Path("benchmarks/results")


def result_pages(results_dir: str | Path = DEFAULT_RESULTS) -> dict[str, str]:
    """Markdown pages by name (``presets``, ``distill_gain_deformable_detr``, ...), README excluded."""
    results_dir = Path(results_dir)
    return {p.stem: p.read_text() for p in sorted(results_dir.glob("*.md")) if p.name != "README.md"}


def result_files(results_dir: str | Path = DEFAULT_RESULTS) -> dict[str, dict]:
    """Every readable result JSON by its path under ``results_dir`` without suffix.

    Top-level files, plus the files of a subdirectory that has no top-level summary of its
    own name: ``presets/*.json`` counts, but a suite's per-run ``SUITE/*.json`` is already
    summarised in ``SUITE.json``.
    """
    results_dir = Path(results_dir)
    paths = sorted(results_dir.glob("*.json"))
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir()) if results_dir.is_dir() else []:
        if not (results_dir / f"{folder.name}.json").is_file():
            paths += sorted(folder.glob("*.json"))
    loaded = {}
    for path in paths:
        try:
            loaded[str(path.relative_to(results_dir).with_suffix(""))] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return loaded


def ap_rows(data, prefix: str = "") -> dict[str, dict]:
    """Every object with a numeric "AP" inside ``data``, by its key path ("" for the top level)."""
    rows = {}
    if isinstance(data, dict):
        if isinstance(data.get("AP"), int | float) and not isinstance(data.get("AP"), bool):
            rows[prefix or "."] = data
        for key, value in data.items():
            rows.update(ap_rows(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            rows.update(ap_rows(value, f"{prefix}[{index}]"))
    return rows


def ap_table(results: dict[str, dict]) -> dict[str, float]:
    """{"file: row": AP x100} over all result files (rows without a finite AP left out)."""
    table = {}
    for name, data in results.items():
        for row, values in ap_rows(data).items():
            if math.isfinite(values["AP"]):
                table[name if row == "." else f"{name}: {row}"] = 100 * values["AP"]
    return table


def plot_ap(table: dict[str, float], title: str = "COCO AP on the shapes val split"):
    """Horizontal bars of AP x100, one per row of ``ap_table``."""
    figure = Figure(figsize=(8, 0.3 * max(len(table), 3) + 1), layout="constrained")
    ax = figure.subplots()
    names = list(table)
    ax.barh(range(len(names)), [table[n] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("AP x100")
    ax.set_title(title, fontsize=9)
    for i, name in enumerate(names):
        ax.text(table[name], i, f" {table[name]:.1f}", va="center", fontsize=7)
    return figure
