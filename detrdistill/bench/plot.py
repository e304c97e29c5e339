"""The suite's figure: mean AP per row with seed std (bars) and AP at checkpoints against
training steps and against training time."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure


def draw_summary(summary: dict) -> Figure:
    """One row of three panels per family (AP bars; AP at checkpoints by step and by time),
    from ``summary.build_summary``'s dict."""
    families = list(summary["families"].items())
    rows = max(len(families), 1)
    figure = Figure(figsize=(20, 4.2 * rows))
    axes = figure.subplots(rows, 3, squeeze=False)
    for (family, section), (bars, by_step, by_time) in zip(families, axes, strict=False):
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
        seeds = max((len(row["seeds"]) for row in section["rows"]), default=0)  # a partial page has fewer
        bars.set_title(f"{summary['suite']}: {family} (mean ± std over {seeds} of {len(summary['seeds'])} seed(s))",
                       fontsize=10)
        # Steps x step times measured interleaved where the suite has them: a wall clock counts
        # whatever else the machine ran.
        interleaved = all("cost_min" in row for row in section["rows"] if row["checkpoints"])
        for row in section["rows"]:
            points = row["checkpoints"]
            if points:
                minutes = [p["cost_min"] if interleaved else p["elapsed_s"] / 60 for p in points]
                for curves, x in ((by_step, [p["step"] for p in points]), (by_time, minutes)):
                    curves.plot(x, [100 * p["AP"] for p in points], marker="o", markersize=3, label=row["label"])
        by_step.set_xlabel("training step")
        by_time.set_xlabel("training time (min): steps x step time measured interleaved" if interleaved else
                           "training time (min, median over seeds)")
        for curves in (by_step, by_time):
            curves.set_ylabel("AP at checkpoints (x100)")
        by_step.set_title("AP during training, by step", fontsize=10)
        by_time.set_title("AP during training, by training time", fontsize=10)
        if any(row["checkpoints"] for row in section["rows"]):
            # Beside the axes: with eight or more rows a legend inside covers the curves.
            by_time.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    return figure


def plot_summary(summary: dict, path: Path) -> None:
    """``draw_summary`` saved as a PNG."""
    draw_summary(summary).savefig(path, dpi=110)
