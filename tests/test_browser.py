"""The interactive part in a real browser: JupyterLab serves notebook 06 at smoke size, headless
Chromium runs every cell, the mask browser's widgets render, one control is changed and the
picture changes with it.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the
``selenium`` bindings (the dev extra), driving the system browser through the system driver:
nothing downloads a browser. Skipped, saying what is missing, without them. The screenshot goes
to ``DETRDISTILL_BROWSER_SCREENSHOT`` when set (the README's is made that way), else beside the
test's temporary files.
"""

import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_notebooks import ROOT, SMOKE

papermill = pytest.importorskip("papermill", reason="the notebooks extra is not installed")
nbformat = pytest.importorskip("nbformat", reason="the notebooks extra is not installed")

NOTEBOOK = ROOT / "notebooks" / "06_visualizations.ipynb"
BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (BROWSER and DRIVER):
    pytest.skip("the browser test needs Debian's chromium and chromium-driver: apt-get install chromium "
                "chromium-driver (.ci/run does)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: pip install -e '.[dev]'")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TIMEOUT_S = 300  # running the notebook's cells at smoke size, on two busy cores
# Every code cell has run (an execution count) and the kernel is idle again.
ALL_CELLS_RAN = """
const panel = window.jupyterapp.shell.currentWidget;
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const code = panel.content.widgets.filter(cell => cell.model.type === 'code');
return !!kernel && kernel.status === 'idle' && code.every(cell => cell.model.executionCount !== null);
"""
# "ename: evalue" of every error output in the notebook.
ERRORS = """
const found = [];
for (const cell of window.jupyterapp.shell.currentWidget.content.widgets) {
  if (cell.model.type !== 'code') continue;
  for (let i = 0; i < cell.model.outputs.length; i++) {
    const output = cell.model.outputs.get(i).toJSON();
    if (output.output_type === 'error') found.push(output.ename + ': ' + output.evalue);
  }
}
return found;
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def smoke_copy(folder: Path) -> Path:
    """Notebook 06 with the smoke-size parameters of test_notebooks injected, in ``folder``."""
    declared = papermill.inspect_notebook(str(NOTEBOOK))
    values = {**SMOKE, "data_dir": str(folder / "data"), "work_dir": str(folder / "runs")}
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # As papermill does: a cell after the one tagged "parameters" that sets the new values.
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    assignments = "\n".join(f"{name} = {value!r}" for name, value in values.items() if name in declared)
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(assignments, metadata={"tags": ["injected-parameters"]}))
    path = folder / NOTEBOOK.name
    nbformat.write(notebook, path)
    return path


def start_lab(folder: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:port serving ``folder``, its settings kept inside it, the app exposed
    to the page's scripts (``window.jupyterapp``) so that the test can run the cells."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(folder / ".config"),
           "JUPYTERLAB_SETTINGS_DIR": str(folder / ".settings"), "JUPYTERLAB_WORKSPACES_DIR": str(folder / ".ws"),
           "JUPYTER_RUNTIME_DIR": str(folder / ".runtime")}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--ServerApp.root_dir={folder}", f"--IdentityProvider.token={token}",
               "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0", "--allow-root"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=(folder / "lab.log").open("w"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2):
                return server
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"JupyterLab did not start on port {port}: {(folder / 'lab.log').read_text()[-2000:]}")


def open_browser():
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1100"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))


def output_picture(driver) -> str:
    """The PNG the mask browser's Output widget shows now ('' before it shows one)."""
    pictures = driver.find_elements(By.CSS_SELECTOR, ".widget-output img")
    return pictures[0].get_attribute("src") if pictures else ""


def test_mask_browser_widgets_render_and_follow_a_control(tmp_path):
    notebook = smoke_copy(tmp_path)
    port, token = free_port(), secrets.token_hex(16)
    server = start_lab(tmp_path, port, token)
    driver = None
    try:
        driver = open_browser()
        driver.get(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
        wait = WebDriverWait(driver, TIMEOUT_S, poll_frequency=1)
        wait.until(lambda d: d.execute_script(
            "const app = window.jupyterapp; const panel = app && app.shell.currentWidget;"
            "return !!(panel && panel.sessionContext && panel.sessionContext.session"
            " && panel.sessionContext.session.kernel && panel.content && panel.content.widgets.length);"))
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
        wait.until(lambda d: d.execute_script(ALL_CELLS_RAN))
        assert driver.execute_script(ERRORS) == [], "a cell of the notebook failed in the browser"
        toggles = driver.find_elements(By.CSS_SELECTOR, ".widget-toggle-buttons button")
        assert {"query", "vanilla", "quality-weighted"} <= {button.text for button in toggles}
        assert driver.find_elements(By.CSS_SELECTOR, ".widget-dropdown select")
        assert driver.find_elements(By.CSS_SELECTOR, ".widget-slider, .widget-hslider")
        before = wait.until(output_picture)
        assert before.startswith("data:image/png;base64,")
        next(button for button in toggles if button.text == "vanilla").click()
        after = wait.until(lambda d: (picture := output_picture(d)) != before and picture)
        assert len(base64.b64decode(after.split(",", 1)[1])) > 1000  # a real picture, not an empty one
        widget = driver.find_element(By.CSS_SELECTOR, ".widget-vbox")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", widget)
        time.sleep(1)  # let the scrolled page paint
        shot = Path(os.environ.get("DETRDISTILL_BROWSER_SCREENSHOT", tmp_path / "mask_browser.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert widget.screenshot(str(shot)) and shot.stat().st_size > 1000
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
