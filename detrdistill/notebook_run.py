"""``make notebooks``: execute the ordered notebooks at their CPU size and keep their outputs.

Each notebook runs with papermill at its default parameters (which reuse ``make demo``'s and
the presets' runs) and replaces the committed copy only when every cell ran; its first cell
then says when, in how long and from which runs. ``notebook_problems`` is the check that a
committed notebook reads as executed: no error output, no code cell left unexecuted, cells in
execution order.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from detrdistill.runs import model_digest

KERNEL = "detrdistill"
STAMP = "<!-- executed-by-make-notebooks -->"
STAMP_LINE = re.compile(rf"\n*{re.escape(STAMP)}.*\Z", re.S)


def notebook_problems(notebook: dict) -> list[str]:
    """What keeps a notebook (its JSON) from reading as executed top to bottom: error outputs,
    code cells with source but no execution count, execution counts out of order."""
    problems, last = [], 0
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            problems.append(f"cell {index}: error output {errors[0].get('ename')}: {errors[0].get('evalue', '')[:200]}")
        count = cell.get("execution_count")
        if count is None:
            problems.append(f"cell {index}: not executed")
        elif count <= last:
            problems.append(f"cell {index}: execution count {count} after {last} (cells run out of order)")
        else:
            last = count
    return problems


def run_dirs_used(parameters: dict) -> dict[str, str]:
    """The run directories among a notebook's parameters (``*_run``) -> their weights digest, or
    what the notebook did without them (it trains its own into ``work_dir``)."""
    used = {}
    for name, value in parameters.items():
        if name.endswith("_run") and isinstance(value, str):
            try:
                used[value] = f"weights {model_digest(value)}"
            except FileNotFoundError:
                used[value] = "absent: trained into work_dir"
    return used


def stamp(notebook: dict, seconds: float, parameters: dict) -> None:
    """Say in the first (Markdown) cell when and from which runs the outputs were made, replacing
    an earlier stamp."""
    first = notebook["cells"][0]
    if first["cell_type"] != "markdown":
        raise ValueError("the notebook's first cell is not Markdown: it has nowhere to say how it was run")
    runs = "; ".join(f"`{path}` ({what})" for path, what in run_dirs_used(parameters).items()) or "none"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = STAMP_LINE.sub("", "".join(first["source"]))
    text += (f"\n\n{STAMP}\n*Outputs from `make notebooks` on {when}, {seconds / 60:.1f} min on this project's "
             f"2-core CPU machine, default parameters; runs read: {runs}.*")
    first["source"] = text.splitlines(True)


def execute_notebooks(notebooks: list[Path], cwd: Path, kernel: str = KERNEL, timeout_s: int = 3600) -> list[str]:
    """Run each notebook in place (a copy is executed and replaces it only when every cell ran);
    return one line per notebook: its time, or the failure that left it unchanged."""
    import papermill

    lines = []
    for path in notebooks:
        parameters = papermill.inspect_notebook(str(path))
        defaults = {name: _literal(spec["default"]) for name, spec in parameters.items()}
        executed = path.with_name(path.stem + ".executing.ipynb")
        started = time.perf_counter()
        try:
            papermill.execute_notebook(str(path), str(executed), kernel_name=kernel, cwd=str(cwd),
                                       progress_bar=False, execution_timeout=timeout_s)
        except Exception as error:  # noqa: BLE001 - one failed notebook leaves the others to run
            executed.unlink(missing_ok=True)
            lines.append(f"{path.name}: FAILED, left unchanged: {type(error).__name__}: {str(error)[:300]}")
            continue
        seconds = time.perf_counter() - started
        notebook = json.loads(executed.read_text())
        problems = notebook_problems(notebook)
        if problems:
            executed.unlink()
            lines.append(f"{path.name}: not kept ({'; '.join(problems)})")
            continue
        stamp(notebook, seconds, defaults)
        # papermill's paths and timings are this machine's: they would churn every diff.
        notebook.get("metadata", {}).pop("papermill", None)
        for cell in notebook["cells"]:
            cell.get("metadata", {}).pop("papermill", None)
            cell.get("metadata", {}).pop("execution", None)
        executed.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
        executed.replace(path)
        lines.append(f"{path.name}: executed in {seconds / 60:.1f} min, {path.stat().st_size / 1e6:.1f} MB")
        print(lines[-1], file=sys.stderr)
    return lines


def _literal(text: str):
    """A parameter's default as papermill reports it (source text) -> its value."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
