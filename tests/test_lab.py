"""JupyterLab in a real browser: the server runs on loopback behind a token, headless Chromium runs
notebook 01 through the UI with tiny parameters and sees its figures, then opens the study in the
Optuna Dashboard tab (jupyterlab-optuna). Screenshots go under ``test-artifacts/browser/``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests import test_browser
from tests.conftest import EXPERIMENTS, REPO, tiny
from tests.servers import free_port, serving

SCREENSHOTS = test_browser.SCREENSHOTS
browser = test_browser.browser  # the headless Chromium fixture, shared
_wait_for_text = test_browser._wait_for_text

needs_chromium = pytest.mark.skipif(
    not (test_browser.CHROMIUM and test_browser.DRIVER),
    reason="needs Debian's chromium and chromium-driver (make test installs them)",
)

# The code cells' state, read from JupyterLab's own model (the server exposes the app as
# `window.jupyterapp`): execution counts, error outputs, image outputs and the kernel's status.
NOTEBOOK_STATE = """
const panel = window.jupyterapp && jupyterapp.shell.currentWidget;
const session = panel && panel.sessionContext && panel.sessionContext.session;
const kernel = session && session.kernel;
const cells = kernel ? panel.content.widgets.filter(c => c.model.type === 'code') : [];
const outputs = cells.flatMap(c => c.model.sharedModel.outputs);
return {
  kernel: kernel ? kernel.status : null,
  counts: cells.map(c => c.model.executionCount),
  queued: Array.from(document.querySelectorAll('.jp-InputArea-prompt'))
    .filter(p => p.textContent.includes('*')).length,
  errors: outputs.filter(o => o.output_type === 'error')
    .map(o => `${o.ename}: ${o.evalue}\\n${(o.traceback || []).join('\\n')}`),
  png: outputs.filter(o => (o.data || {})['image/png']).length,
};
"""


def _notebook_with_tiny_parameters(folder: Path, store: Path) -> Path:
    """Notebook 01 with tiny values set at the end of its parameters cell (where papermill would
    inject them) and no outputs, for Run All in the browser."""
    notebook = json.loads((REPO / "notebooks" / "01_quickstart.ipynb").read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    parameters = {
        "spec_path": str(EXPERIMENTS / "mnist_cnn.yaml"),
        "root": str(store),
        "trials": 1,
        # Explanations are drawn and checked by test_notebooks; here two figures suffice.
        "overrides": [*tiny(store)[1:], "explain.enabled=false", "data.augment=false"],
    }
    tiny_values = "".join(f"{name} = {value!r}\n" for name, value in parameters.items())
    code[0]["source"] = "".join(code[0]["source"]) + "\n# The test's tiny values\n" + tiny_values
    for cell in code:
        cell["outputs"], cell["execution_count"] = [], None
    path = folder / "01_quickstart.ipynb"
    path.write_text(json.dumps(notebook))
    return path


def _lab_settings(folder: Path) -> Path:
    """User settings for a fresh JupyterLab: every cell attached to the page (no windowing, so
    each figure is in the DOM) and no news prompt over the page."""
    settings = {
        "notebook-extension/tracker": {"windowingMode": "none"},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, values in settings.items():
        path = folder / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return folder


def _click_menu(driver, menu: str, item: str) -> None:
    """Open ``menu`` in JupyterLab's menu bar and click ``item`` in it."""
    from selenium.webdriver.common.by import By

    bar = driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
    next(entry for entry in bar if entry.text == menu).click()
    label = (
        f"//li[contains(@class, 'lm-Menu-item')][.//div[@class='lm-Menu-itemLabel'][.='{item}']]"
    )
    next(e for e in driver.find_elements(By.XPATH, label) if e.is_displayed()).click()


def _wait_for(driver, condition, what: str, timeout: float):
    """Poll ``condition(driver)`` until it returns something true; fail naming ``what``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} within {timeout:.0f} s on {driver.current_url}") from None


def _run_all_cells(driver, timeout: float) -> dict:
    """Run > Run All Cells, then wait until the kernel is idle with every code cell executed (or
    an error output); return the notebook's final state."""
    _wait_for(
        driver,
        lambda d: d.execute_script(NOTEBOOK_STATE)["kernel"] == "idle",
        "the kernel started",
        timeout=60,
    )
    _click_menu(driver, "Run", "Run All Cells")

    def finished(d):
        state = d.execute_script(NOTEBOOK_STATE)
        done = all(n is not None for n in state["counts"]) or state["errors"]
        return state if done and state["kernel"] == "idle" and not state["queued"] else False

    return _wait_for(driver, finished, "the notebook ran to its end", timeout)


def _open_optuna_dashboard(driver, storage: str) -> None:
    """File > New Launcher, the launcher's Optuna Dashboard card, then the storage (a URL, or
    the path of a SQLite file as the README shows)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    _click_menu(driver, "File", "New Launcher")
    card = _wait_for(
        driver,
        lambda d: next(
            (
                c for c in d.find_elements(By.CSS_SELECTOR, ".jp-LauncherCard")
                if c.is_displayed() and c.get_attribute("title") == "Launch Optuna Dashboard"
            ),
            False,
        ),
        "the launcher's Optuna Dashboard card",
        timeout=30,
    )  # fmt: skip
    card.click()
    _wait_for_text(driver, ["Initialize Dashboard"], timeout=30)
    field = driver.find_element(
        By.XPATH, "//label[text()='Storage URL or File Path (Required)']/following::input[1]"
    )
    field.send_keys(storage)
    # The field hands its value over after a 500 ms pause; the button is enabled then.
    create = (By.XPATH, "//button[normalize-space()='Create']")
    _wait_for(driver, ec.element_to_be_clickable(create), "Create enabled", timeout=10).click()


@pytest.mark.slow
@needs_chromium
def test_notebook_runs_in_jupyterlab_and_the_optuna_tab_shows_its_study(tmp_path, browser):
    import psutil
    from selenium.webdriver.common.by import By

    folder, store = tmp_path / "lab", tmp_path / "mlruns"
    folder.mkdir()
    _notebook_with_tiny_parameters(folder, store)
    port, token = free_port(), secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        # A fresh JupyterLab: no user config, settings, workspaces or kernels from $HOME.
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter" / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter" / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter" / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(_lab_settings(tmp_path / "jupyter" / "settings")),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jupyter" / "workspaces"),
    }
    if os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = "1"  # the kernel's torch, like conftest's: two workers, two cores
    command = [
        sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", f"--port={port}", "--no-browser",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
        "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    if os.geteuid() == 0:  # as `make lab` does in a container
        command.append("--ServerApp.allow_root=True")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with serving(command, f"{url}/api/status?token={token}", env=env) as server:
        with pytest.raises(OSError, match="403"):  # nothing without the token
            urllib.request.urlopen(f"{url}/api/contents", timeout=10)
        listening = {
            c.laddr.ip for c in psutil.Process(server.pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        }  # fmt: skip
        assert listening == {"127.0.0.1"}, listening
        browser.get(f"{url}/lab/tree/01_quickstart.ipynb?token={token}")
        state = _run_all_cells(browser, timeout=150)
        assert not state["errors"], state["errors"][0][-3000:]
        assert state["png"] >= 2, "the optimisation history and the learning curves"
        kernels = psutil.Process(server.pid).children(recursive=True)
        assert kernels, "a kernel ran the notebook"

        # Every figure the kernel drew is an image that has loaded in the page.
        images = browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
        sizes = browser.execute_script(
            "return arguments[0].map(i => i.complete ? i.naturalWidth : 0)", images
        )
        assert len(sizes) == state["png"] and all(width > 0 for width in sizes), sizes
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", images[-1])
        browser.save_screenshot(str(SCREENSHOTS / "jupyterlab_notebook.png"))

        # The Optuna Dashboard tab on the study the notebook just ran: its one finished trial.
        _open_optuna_dashboard(browser, str(store / "optuna.db"))
        _wait_for_text(browser, ["mnist_cnn", "Direction: MAXIMIZE"], timeout=60)
        browser.find_element(By.XPATH, "//a[contains(., 'mnist_cnn')]").click()
        _wait_for(
            browser,
            lambda d: d.find_elements(By.CSS_SELECTOR, "a[href$='/trials']"),
            "the study's page",
            timeout=30,
        )[0].click()
        page = _wait_for_text(browser, ["1 Trials", "Trial 0", "Complete", "Best Trial"])
        assert "Trial 1" not in page
        browser.save_screenshot(str(SCREENSHOTS / "jupyterlab_optuna.png"))
    # JupyterLab and its kernel are gone with the server.
    _, alive = psutil.wait_procs(kernels, timeout=10)
    assert not alive, alive
    for name in ("jupyterlab_notebook", "jupyterlab_optuna"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000  # a rendered page


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_lab_serves_loopback_with_a_token_and_starts_as_root():
    """`make lab`'s command (dry run): 127.0.0.1, Jupyter's generated token left on, and, when run
    as root (containers), allowed to start."""
    dry_run = subprocess.run(
        ["make", "-n", "lab"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    (lab,) = [line for line in dry_run.splitlines() if "jupyter lab" in line]
    assert "--ip 127.0.0.1" in lab and "token" not in lab.lower()
    assert ("--ServerApp.allow_root=True" in lab) == (os.geteuid() == 0)
