"""Every notebook runs top to bottom with papermill at smoke size (tiny models and data).

Executed copies go to a temporary directory (never committed). The kernel is this venv's
python, registered as the ``detrdistill`` kernelspec inside the venv when missing (the
Makefile's install does the same), so a fresh clone needs nothing else.
"""

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
    outputs = [o for cell in nbformat.read(out, as_version=4).cells if cell.cell_type == "code" for o in cell.outputs]
    as_text = [o for o in outputs if "image/png" not in o.get("data", {})
               and o.get("data", {}).get("text/plain", "").startswith("<Figure")]
    assert not as_text, f"{notebook.name}: {len(as_text)} figure(s) shown as text, not as a picture"
