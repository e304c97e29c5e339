"""A suite's results page as Markdown, from ``summary.build_summary``'s dict."""

from __future__ import annotations

import math

from detrdistill.bench.plan import SuitePlan
from detrdistill.bench.suites import SAME_TIME
from detrdistill.bench.summary import points
from detrdistill.evaluate import AP_KEYS


def _ap(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _mean_pm_std(mean: float, std: float, scale: float = 100, digits: int = 1) -> str:
    if math.isnan(mean):
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {scale * std:.{digits}f}"


def _gain_text(gain: dict | None) -> str:
    if not gain:
        return ""
    text = points(gain["gain"])
    if gain.get("low") is not None:
        text += f" [{points(gain['low'])}, {points(gain['high'])}]"
    return text


def render_markdown(summary: dict, plan: SuitePlan) -> str:
    suite, machine = plan.suite, summary["machine"]
    lines = [
        f"# Benchmark `{summary['suite']}`{' (quick subset)' if summary['quick'] else ''}: {summary['title']}",
        "",
        f"Regenerate: `{summary['command']}`",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, "
        f"torch.get_num_threads() = {machine['torch_threads']}; transformers {machine['transformers']}; "
        f"Python {machine['python']}.",
        f"- Data: `{summary['data']}`, val split; AP x100 on the whole split (APs/APm/APl on area ranges scaled "
        "to the image size, see README).",
        f"- Budget: {suite.budget}; seeds {', '.join(map(str, summary['seeds']))}; checkpoint evaluations on the "
        f"first {suite.eval_max_images} val images.",
        "- Cells: mean ± sample std over seeds. Gain: the row minus its baseline row (the student unless named), "
        f"mean over seeds, with a 95% paired bootstrap interval over val images ({summary['resamples']} resamples "
        "of the image ids, the same for both rows, seeds pooled per resample).",
        f"- Paper column, for reference only (COCO at full scale; not expected to match): {summary['paper_source']}.",
    ]
    if any(section.get("equal_time_interleaved") for section in summary["families"].values()):
        lines.append("- The equal-time row is the undistilled baseline trained for as many steps as cost what the "
                     "DETRDistill row's steps cost, by the two rows' step times measured interleaved in one process "
                     "(bench/timing.py), not by wall clocks that other work on the machine may have stretched.")
    elif any(section["equal_time"] for section in summary["families"].values()):
        lines.append("- The equal-time row (recorded before bench/timing.py) is the undistilled baseline trained for "
                     "as many steps as fit in the DETRDistill row's training time at the baseline's own step time "
                     "(per seed), both wall clocks.")
    for family, section in summary["families"].items():
        longer = [f"{v.label}: {v.steps_factor}x" for v in suite.variants if v.steps_factor != 1]
        longer += ["equal-time row: more"] if suite.equal_time else []
        lines += ["", f"## {family}", "", f"{section['steps']} steps per run"
                  + (f" ({'; '.join(longer)})" if longer else "")
                  + f", checkpoints every {section['eval_every']} steps.", ""]
        header = ["row", *AP_KEYS, "steps", "step ms", "gain vs baseline [95% CI]", "paper AP (gain)"]
        lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        teacher = section["teacher"]
        if teacher is not None:
            t = teacher["eval"]
            paper = "-" if teacher["paper"] is None else f"{teacher['paper']:.1f}"
            cells = [_ap(t.get(k)) for k in AP_KEYS]
            weights = f", weights {section['teacher_digest']}" if section.get("teacher_digest") else ""
            lines.append(f"| teacher (`{teacher['dir']}`, 1 run{weights}) | "
                         + " | ".join(cells) +
                         f" | {t.get('steps', '-')} | {t.get('step_ms', '-')} | | {paper} |")
        labels = {row["key"]: row["label"] for row in section["rows"]}
        for row in section["rows"]:
            mean, std = row["mean"], row["std"]
            cells = [_mean_pm_std(mean[k], std[k]) for k in AP_KEYS]
            cells += [f"{mean['steps']:.0f}", _mean_pm_std(mean["step_ms"], std["step_ms"], 1, 0)]
            gain = _gain_text(row["gain"])
            if gain and row["baseline"] not in ("student", None):
                gain += f" vs {labels.get(row['baseline'], row['baseline'])}"
            paper = "-" if row["paper"] is None else f"{row['paper']:.1f}"
            if row["paper_gain"] is not None:
                paper += f" ({row['paper_gain']:+.1f})"
            label = row["label"] + ("" if len(row["seeds"]) == len(summary["seeds"]) else
                                    f" ({len(row['seeds'])} of {len(summary['seeds'])} seeds)")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {gain} | {paper} |")
        costed = [row for row in section["rows"] if "cost_min" in row]
        if costed:
            interleaved = section["interleaved"]
            lines += ["", f"Cost of each row on this machine ({interleaved['cpu']}): its steps x its step time "
                      f"measured interleaved with the other rows in one process (`{interleaved['file']}`), not its "
                      "wall clock:", ""]
            lines += [f"- {row['label']}: {row['interleaved_ms']:.0f} ms a step, {row['cost_min']:.1f} min"
                      for row in costed]
        equal_time = section["equal_time"]
        if equal_time:
            lines += ["", f"Equal wall-clock time: {labels.get(suite.reference)} - "
                      f"{labels.get(SAME_TIME)} = {_gain_text(equal_time)} AP."]
        steps = sorted({p["step"] for row in section["rows"] for p in row["checkpoints"]})
        if steps:
            lines += ["", f"AP at checkpoints (mean over seeds, first {suite.eval_max_images} val images):", "",
                      "| row | " + " | ".join(f"step {s}" for s in steps) + " |",
                      "|---|" + "---:|" * len(steps)]
            for row in section["rows"]:
                at = {p["step"]: p["AP"] for p in row["checkpoints"]}
                lines.append(f"| {row['label']} | " + " | ".join(_ap(at.get(s)) for s in steps) + " |")
    if summary.get("shared_cores"):
        lines += ["", "**Warning: these runs shared the cores with other busy processes**, so their step times, "
                  "and the equal-time student's steps derived from them, are not their own (two torch processes on "
                  "2 cores run 10-40x slower): " + "; ".join(summary["shared_cores"]) + "."]
    lines += ["", "## Targets", ""]
    if not summary["targets"]:
        lines.append("This suite has no acceptance targets; it reports the comparison only.")
    for target in summary["targets"]:
        verdict = {True: "MET", False: "NOT MET", None: "NOT CHECKED"}[target["met"]]
        lines.append(f"- **{verdict}** ({target['source']}), {target['family']}: {target['text']}. "
                     f"{target['detail']}.")
    return "\n".join(lines) + "\n"


def finite(value):
    """NaN (no std for one seed, an empty area range) as null, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
