"""A suite's results page: RESULTS/<suite>.md, the numbers behind it (.json) and its plot (.png).

``summary.py`` computes the numbers, ``render.py`` writes them as Markdown, ``plot.py`` draws them.
"""

from __future__ import annotations

import json
from pathlib import Path

from detrdistill.bench.plan import SuitePlan
from detrdistill.bench.plot import plot_summary
from detrdistill.bench.render import finite, render_markdown
from detrdistill.bench.summary import build_summary


def write_report(plan: SuitePlan, resamples: int = 1000) -> Path:
    """Write RESULTS/<suite>.md, .json and .png; return the .md path."""
    base = plan.results / plan.result_name
    summary = build_summary(plan, resamples)
    plan.results.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(finite(summary), indent=2))
    base.with_suffix(".md").write_text(render_markdown(summary, plan))
    plot_summary(summary, base.with_suffix(".png"))
    print(f"[bench] wrote {base.with_suffix('.md')}, .json and .png")
    return base.with_suffix(".md")
