"""Every notebook runs top to bottom with papermill at smoke size (tiny models and data).

Executed copies go to a temporary directory (never committed). The kernel is this venv's
python, registered as the ``detrdistill`` kernelspec inside the venv when missing (the
Makefile's install does the same), so a fresh clone needs nothing else.
"""

import ast
import json
import re
import sys
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill", reason="the notebooks extra is not installed")
nbformat = pytest.importorskip("nbformat", reason="the notebooks extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
KERNEL = "detrdistill"
SMOKE = {
    "tiny": True,
    "num_train": 24,
    "num_val": 8,
    "teacher_steps": 10,
    "student_steps": 6,
    "ablation_steps": 4,
    "num_images": 2,
    "is_images": 4,
    "share_images": 4,
    "browse_images": 4,
    "progress": False,
    "results_dir": str(ROOT / "benchmarks" / "results"),
    "run_suite": False,
}


def ensure_kernel() -> str:
    """The ``detrdistill`` kernelspec pointing at this interpreter, installed into sys.prefix if needed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        if KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == sys.executable:
            return KERNEL
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="Python (detrdistill)", prefix=sys.prefix)
    return KERNEL


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Data and runs shared by the notebooks of one test session (later ones reuse them)."""
    return tmp_path_factory.mktemp("notebooks")


def _last_call(source: str) -> ast.Call | None:
    """The cell's last statement when it is a bare call (what Jupyter displays), else None."""
    body = ast.parse(source).body
    last = body[-1] if body else None
    return last.value if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) else None


def _name(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")


NUMBER_CELL = re.compile(r"\|\s*-?\d+(\.\d+)?\s*\|")


def check_cell_output(notebook: str, index: int, cell) -> None:
    """What a cell shows, not just that it ran: a cell ending in ``plot_*(...)`` shows a
    picture; one ending in ``display(Markdown(...))`` shows a Markdown table, with numbers
    when it is an AP table of runs."""
    call = _last_call(cell.source)
    if call is None:
        return
    where = f"{notebook}, cell {index}"
    if _name(call).startswith("plot_"):
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"{where}: {_name(call)} drew nothing"
    if _name(call) == "display" and call.args and isinstance(call.args[0], ast.Call) and \
            _name(call.args[0]) == "Markdown":
        shown = "".join(o.get("data", {}).get("text/markdown", "") for o in cell.outputs)
        assert "|" in shown, f"{where}: the Markdown it displays is empty or has no table"
        if "runs_table" in cell.source:
            assert NUMBER_CELL.search(shown), f"{where}: its AP table has no numbers: {shown[:200]}"


def test_cell_output_checks_catch_a_missing_figure_and_an_empty_table():
    figure_cell = nbformat.v4.new_code_cell("plot_samples(val, [0])")
    with pytest.raises(AssertionError, match="plot_samples drew nothing"):
        check_cell_output("nb", 1, figure_cell)
    figure_cell.outputs = [nbformat.v4.new_output("display_data", {"image/png": "iVBOR"})]
    check_cell_output("nb", 1, figure_cell)
    table_cell = nbformat.v4.new_code_cell("display(Markdown(finished_runs_table(runs)))")
    empty = "| name | AP |\n|---|---|\n| a | - |"
    table_cell.outputs = [nbformat.v4.new_output("display_data", {"text/markdown": empty})]
    with pytest.raises(AssertionError, match="has no numbers"):
        check_cell_output("nb", 2, table_cell)
    table_cell.outputs = [nbformat.v4.new_output("display_data", {"text/markdown": "| name | AP |\n| a | 4.2 |"})]
    check_cell_output("nb", 2, table_cell)


def test_every_notebook_is_listed():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_size(notebook, workspace, monkeypatch):
    # One thread per kernel, as conftest does in-process: tiny models gain nothing from more,
    # and on busy cores competing threads made them ~8x slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    declared = papermill.inspect_notebook(str(notebook))
    assert declared, f"{notebook.name} has no cell tagged 'parameters'"
    values = {**SMOKE, "data_dir": str(workspace / "data"), "work_dir": str(workspace / "runs")}
    parameters = {name: value for name, value in values.items() if name in declared}
    out = workspace / "executed" / notebook.name
    out.parent.mkdir(exist_ok=True)
    # Raises PapermillExecutionError, naming the cell, when any cell fails.
    papermill.execute_notebook(str(notebook), str(out), parameters=parameters, kernel_name=ensure_kernel(),
                               cwd=str(ROOT), progress_bar=False, execution_timeout=300)
    assert out.is_file()
    executed = nbformat.read(out, as_version=4).cells
    for index, cell in enumerate(executed):
        if cell.cell_type == "code":
            check_cell_output(notebook.name, index, cell)
    outputs = [o for cell in executed if cell.cell_type == "code" for o in cell.outputs]
    as_text = [o for o in outputs if "image/png" not in o.get("data", {})
               and o.get("data", {}).get("text/plain", "").startswith("<Figure")]
    assert not as_text, f"{notebook.name}: {len(as_text)} figure(s) shown as text, not as a picture"


def test_notebook_problems_catches_errors_unexecuted_cells_and_disorder():
    from detrdistill.notebook_run import notebook_problems, stamp

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# title"),
        nbformat.v4.new_code_cell("a = 1", execution_count=1),
        nbformat.v4.new_code_cell("", execution_count=None),  # empty cells need not run
        nbformat.v4.new_code_cell("b = a", execution_count=2),
    ])
    assert notebook_problems(notebook) == []
    notebook.cells[3].execution_count = None
    assert notebook_problems(notebook) == ["cell 3: not executed"]
    notebook.cells[3].execution_count = 1
    assert notebook_problems(notebook) == ["cell 3: execution count 1 after 1 (cells run out of order)"]
    notebook.cells[3].execution_count = 2
    notebook.cells[1].outputs = [nbformat.v4.new_output("error", ename="KeyError", evalue="'x'", traceback=[])]
    assert notebook_problems(notebook) == ["cell 1: error output KeyError: 'x'"]
    stamp(notebook, 90.0, {"teacher_run": "no/such/run", "tiny": False})
    stamp(notebook, 30.0, {"teacher_run": "no/such/run"})  # a second stamp replaces the first
    first = "".join(notebook.cells[0].source)
    assert first.startswith("# title") and first.count("make notebooks") == 1 and "0.5 min" in first
    assert "`no/such/run` (absent: trained into work_dir)" in first


def test_make_notebooks_executes_in_place_and_keeps_a_failing_notebook_unchanged(tmp_path, monkeypatch):
    from detrdistill.notebook_run import execute_notebooks, notebook_problems

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    good = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# good"),
        nbformat.v4.new_code_cell("answer = 6 * 7", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(answer)"),
    ])
    bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# bad"),
                                          nbformat.v4.new_code_cell("1 / 0")])
    for name, notebook in (("good.ipynb", good), ("bad.ipynb", bad)):
        notebook.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
        nbformat.write(notebook, tmp_path / name)
    before = (tmp_path / "bad.ipynb").read_text()
    lines = execute_notebooks([tmp_path / "good.ipynb", tmp_path / "bad.ipynb"], tmp_path, kernel=ensure_kernel(),
                              timeout_s=120)
    assert lines[0].startswith("good.ipynb: executed") and lines[1].startswith("bad.ipynb: FAILED")
    executed = json.loads((tmp_path / "good.ipynb").read_text())
    assert notebook_problems(executed) == []
    assert "42" in "".join(executed["cells"][2]["outputs"][0]["text"])
    assert "make notebooks" in "".join(executed["cells"][0]["source"])
    assert "papermill" not in executed["metadata"]
    assert (tmp_path / "bad.ipynb").read_text() == before
    assert not list(tmp_path.glob("*.executing.ipynb"))
