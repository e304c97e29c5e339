"""The suite's figure: mean AP per row with seed std (bars) and AP at checkpoints against training time."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on the benchmark machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_summary(summary: dict, path: Path) -> None:
    """One row of two panels per family, from ``report.build_summary``'s dict, saved as a PNG."""
    families = list(summary["families"].items())
    rows = max(len(families), 1)
    figure, axes = plt.subplots(rows, 2, figsize=(16, 4.2 * rows), squeeze=False)
    for (family, section), (bars, curves) in zip(families, axes, strict=False):
        labels, means, stds, colours = [], [], [], []
        if section["teacher"] is not None and section["teacher"]["eval"]:
            labels.append("teacher")
            means.append(100 * section["teacher"]["eval"]["AP"])
            stds.append(0.0)
            colours.append("0.6")
        for row in section["rows"]:
            labels.append(row["label"])
            means.append(100 * row["mean"]["AP"])
            std = row["std"]["AP"]
            stds.append(0.0 if math.isnan(std) else 100 * std)
            colours.append("tab:orange" if row["baseline"] is None or row["key"].startswith("student") else "tab:blue")
        positions = range(len(labels))
        drawn = bars.bar(positions, means, yerr=stds, capsize=3, color=colours)
        bars.bar_label(drawn, fmt="%.1f", fontsize=7, padding=2)
        bars.set_ylim(bottom=0)
        bars.set_xticks(list(positions), labels, rotation=30, ha="right", fontsize=8)
        bars.set_ylabel("AP (val, x100)")
        bars.set_title(f"{summary['suite']}: {family} (mean ± std over {len(summary['seeds'])} seed(s))", fontsize=10)
        for row in section["rows"]:
            points = row["checkpoints"]
            if points:
                curves.plot([p["elapsed_s"] / 60 for p in points], [100 * p["AP"] for p in points], marker="o",
                            markersize=3, label=row["label"])
        curves.set_xlabel("training time (min, median over seeds)")
        curves.set_ylabel("AP at checkpoints (x100)")
        curves.set_title("AP during training", fontsize=10)
        if any(row["checkpoints"] for row in section["rows"]):
            # Beside the axes: with eight or more rows a legend inside covers the curves.
            curves.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
