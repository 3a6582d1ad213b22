"""The course as a learner meets it: JupyterLab in a real browser (headless Chromium via selenium).

Each notebook here is run top to bottom in the lab, and the test asserts what nbval cannot
see: every plotly figure rendered, titles clear of the toolbar and tick labels apart, each
explorer redraws when a control is used and fits the main area of a 1280-px-wide window
with the file browser open, and the page logged no severe console errors. These notebooks
hold an explorer each and are not run again by nbval (see conftest.py at the root).

Chromium comes from the system (Debian's `chromium` and `chromium-driver`); nothing
downloads a browser. `.ci/run` installs it; without it these tests are skipped.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mechlearn.course import ROOT
from mechlearn.viz import EXPLORER_CLASS

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
INSTALL = "install Chromium to run the browser tests: `sudo apt-get install chromium chromium-driver` (Debian, Ubuntu)"
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=INSTALL)

# The solution notebooks the browser runs, each with the explorer it must show.
BROWSER_NOTEBOOKS = {
    "1_foundations/03_induction_heads.ipynb": "AttentionExplorer",
    "1_foundations/04_probing_world_models.ipynb": "OthelloExplorer",
    "1_foundations/06_sparse_autoencoders.ipynb": "FeatureBrowser",
}
WINDOW = (1280, 900)
RUN_TIMEOUT = 600  # seconds for a whole notebook, generous for a busy 2-core machine


def browser_available() -> bool:
    return bool(CHROMIUM and CHROMEDRIVER)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A JupyterLab server over copies of the solutions (the lab autosaves): its address and token."""
    root = tmp_path_factory.mktemp("lab")
    for relative in BROWSER_NOTEBOOKS:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "solutions" / relative, root / relative)
    port, token = _free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/api/status?token={token}", server)
        yield base, token
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {server.returncode} before it served {url}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer {url} within {seconds:.0f} s")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


# --- what the page is asked, in JavaScript (JupyterLab exposes its app as window.jupyterapp) --------

# Starts running every cell and returns at once; window.runAllResult is '' when done, or the error.
_RUN_ALL = """
window.runAllResult = null;
(async () => {
  const app = () => window.jupyterapp;
  while (!app() || !app().shell.currentWidget || !app().shell.currentWidget.sessionContext) {
    await new Promise(wake => setTimeout(wake, 200));
  }
  const panel = app().shell.currentWidget;
  await panel.context.ready;
  await panel.sessionContext.ready;
  await app().commands.execute('notebook:run-all-cells');
  window.runAllResult = '';
})().catch(error => { window.runAllResult = String(error); });
"""

_OUTPUTS = """
return window.jupyterapp.shell.currentWidget.content.model.toJSON().cells
  .filter(cell => cell.cell_type === 'code')
  .map(cell => cell.outputs.map(output => ({type: output.output_type, ename: output.ename || '',
                                            mimes: Object.keys(output.data || {})})));
"""

# Every rendered plotly figure: its size, and rectangles of its title, toolbar and tick labels.
_FIGURES = """
const rect = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
return [...document.querySelectorAll('.js-plotly-plot')].map(plot => ({
  title: (plot.querySelector('.gtitle') || {}).textContent || '',
  width: plot.getBoundingClientRect().width,
  svg: plot.querySelectorAll('.main-svg').length,
  title_box: plot.querySelector('.gtitle') ? rect(plot.querySelector('.gtitle')) : null,
  modebar_box: plot.querySelector('.modebar') ? rect(plot.querySelector('.modebar')) : null,
  ticks: ['xtick', 'ytick'].map(axis => [...plot.querySelectorAll('.' + axis + ' text')]
                                         .filter(t => t.textContent).map(rect)),
}));
"""

# The explorer: its right edge against the notebook panel's (what the learner sees without
# scrolling sideways), and a fingerprint of the data its figures show.
_EXPLORER = """
const explorer = document.querySelector("." + arguments[0]);
if (!explorer) return null;
const plots = [...explorer.querySelectorAll('.js-plotly-plot')];
return {
  right: Math.max(...[explorer, ...plots].map(el => el.getBoundingClientRect().right)),
  panel_right: explorer.closest('.jp-NotebookPanel').getBoundingClientRect().right,
  file_browser_width: (document.querySelector('.jp-FileBrowser') || {}).offsetWidth || 0,
  shown: JSON.stringify(plots.map(plot => (plot.data || []).map(trace => [trace.z, trace.y, trace.text]))),
};
"""


def _overlap(a: list[float], b: list[float]) -> bool:
    """Whether two [left, top, right, bottom] rectangles share more than a pixel."""
    return min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1


@contextmanager
def _screenshot_on_failure(driver, path: Path) -> Iterator[None]:
    """Save what the browser shows when an assertion fails, and say where."""
    try:
        yield
    except AssertionError as error:
        driver.save_screenshot(str(path))
        raise AssertionError(f"{error}\n(screenshot: {path})") from None


def _run_all(driver) -> None:
    """Run every cell, polling, so no single request to the driver waits for the whole notebook."""
    driver.execute_script(_RUN_ALL)
    deadline = time.monotonic() + RUN_TIMEOUT
    while (result := driver.execute_script("return window.runAllResult;")) is None:
        assert time.monotonic() < deadline, f"the notebook was still running after {RUN_TIMEOUT} s"
        time.sleep(1)
    assert result == "", f"running every cell failed in the lab: {result}"


def _use_a_control(driver) -> None:
    """Step forward with the explorer's ▶ button, or pick another option in its last drop-down."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    explorer = driver.find_element(By.CSS_SELECTOR, f".{EXPLORER_CLASS}")
    step = [button for button in explorer.find_elements(By.TAG_NAME, "button") if button.text == "▶"]
    if step:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", step[0])
        step[0].click()
    else:
        menu = Select(explorer.find_elements(By.TAG_NAME, "select")[-1])
        menu.select_by_index(1)


@pytest.mark.parametrize("notebook", sorted(BROWSER_NOTEBOOKS))
def test_notebook_in_the_lab(lab: tuple[str, str], browser, notebook: str, tmp_path: Path) -> None:
    base, token = lab
    browser.get(f"{base}/lab/tree/{notebook}?token={token}&reset")
    with _screenshot_on_failure(browser, tmp_path / f"{Path(notebook).stem}.png"):
        _run_all(browser)

        outputs = [output for cell in browser.execute_script(_OUTPUTS) for output in cell]
        errors = [output["ename"] for output in outputs if output["type"] == "error"]
        assert errors == [], f"{notebook}: cells raised {errors}"

        n_plotly = sum("application/vnd.plotly.v1+json" in output["mimes"] for output in outputs)
        figures = browser.execute_script(_FIGURES)
        assert len(figures) >= n_plotly > 0, f"{len(figures)} plotly figures in the page for {n_plotly} outputs"
        for figure in figures:
            assert figure["svg"] > 0 and figure["width"] > 0, f"figure {figure['title']!r} did not render"
            if figure["title_box"] and figure["modebar_box"]:
                assert not _overlap(figure["title_box"], figure["modebar_box"]), (
                    f"the plotly toolbar covers the title {figure['title']!r}"
                )
            for axis in figure["ticks"]:
                crowded = any(_overlap(a, b) for i, a in enumerate(axis) for b in axis[i + 1 :])
                assert not crowded, f"tick labels overlap in figure {figure['title']!r}"

        explorer = browser.execute_script(_EXPLORER, EXPLORER_CLASS)
        assert explorer is not None, f"{notebook}: the {BROWSER_NOTEBOOKS[notebook]} did not render"
        assert explorer["file_browser_width"] > 0, "the file browser should be open, as a learner has it"
        assert explorer["right"] <= explorer["panel_right"], (
            f"the {BROWSER_NOTEBOOKS[notebook]} reaches {explorer['right']:.0f} px, past the right edge of the "
            f"notebook at {explorer['panel_right']:.0f} px"
        )
        _use_a_control(browser)
        deadline = time.monotonic() + 30
        while browser.execute_script(_EXPLORER, EXPLORER_CLASS)["shown"] == explorer["shown"]:
            assert time.monotonic() < deadline, f"the {BROWSER_NOTEBOOKS[notebook]} did not redraw after a control"
            time.sleep(0.5)

        severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == [], f"severe console errors: {json.dumps(severe, indent=1)}"
