"""`workbench ui` in a real browser: headless Chromium (Debian's package) driven by Selenium finds
the study, its trials and its runs in optuna-dashboard and the MLflow UI. Screenshots are saved
under ``test-artifacts/`` for a person to look at."""

from __future__ import annotations

import shutil
import signal
import sys

import pytest

from tests.conftest import REPO
from tests.servers import free_port, serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SCREENSHOTS = REPO / "test-artifacts" / "browser"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="needs Debian's chromium and chromium-driver (make test installs them)",
    ),
]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait_for_text(driver, texts: list[str], timeout: float = 60) -> str:
    """Wait until the rendered page shows every one of ``texts``; return the page text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(t in body for t in texts) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(shown)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{texts} not all on {driver.current_url}: {body[:1500]!r}") from None


def _wait_for_image(driver, alt: str, timeout: float = 60):
    """The page's image with alt text ``alt``, once it has loaded (natural width > 0)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(d):
        for image in d.find_elements(By.CSS_SELECTOR, f'img[alt="{alt}"]'):
            if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image):
                return image
        return False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(loaded)
    except TimeoutException:
        sources = [i.get_attribute("src") for i in driver.find_elements(By.TAG_NAME, "img")]
        raise AssertionError(
            f"no loaded image {alt!r} on {driver.current_url}: {sources}"
        ) from None


def test_dashboards_show_the_study_its_trials_and_runs(tiny_study, browser):
    from selenium.webdriver.common.by import By

    spec, result = tiny_study
    mlflow_port, dashboard_port = free_port(), free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    command = [
        sys.executable, "-m", "workbench.cli", "ui", "--root", spec.tracking.root,
        "--mlflow-port", str(mlflow_port), "--dashboard-port", str(dashboard_port),
    ]  # fmt: skip
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ready = [f"{mlflow_url}/health", f"{dashboard_url}/api/studies"]
    with serving(command, ready, stop=signal.SIGINT):
        # optuna-dashboard: the study list, then the study's page with its trial.
        browser.get(f"{dashboard_url}/dashboard")
        _wait_for_text(browser, [result.study_name])
        browser.save_screenshot(str(SCREENSHOTS / "optuna_dashboard_studies.png"))
        study_id = result.load_study()._study_id
        browser.get(f"{dashboard_url}/dashboard/studies/{study_id}/trials")
        page = _wait_for_text(browser, ["Trial 0", "Complete"])
        assert "Trial 1" not in page  # the study ran exactly one trial
        browser.save_screenshot(str(SCREENSHOTS / "optuna_dashboard_trials.png"))

        # The trial's note (written by `workbench ui` as it started, with its ports): its text,
        # its learning curves loaded from the dashboard's artifact store, and a link that opens
        # the trial's run in the MLflow UI.
        browser.get(f"{dashboard_url}/dashboard/studies/{study_id}/trials?numbers=0")
        _wait_for_text(browser, ["Trial 0: COMPLETE", "champion", "Ended: completed after"])
        figure = _wait_for_image(browser, "learning_curves")
        browser.execute_script("arguments[0].scrollIntoView()", figure)
        browser.save_screenshot(str(SCREENSHOTS / "optuna_dashboard_trial_note.png"))
        link = browser.find_element(By.PARTIAL_LINK_TEXT, "MLflow run")
        assert link.get_attribute("href").startswith(f"{mlflow_url}/#/experiments/")
        before = set(browser.window_handles)
        browser.execute_script("arguments[0].click()", link)  # as a click, wherever it sits
        opened = set(browser.window_handles) - before  # the note may open it in a new tab
        if opened:
            browser.switch_to.window(opened.pop())
        _wait_for_text(browser, [f"trial-{result.best_trial}", "Finished", "optuna-dashboard"])
        assert f"/runs/{result.best_run_id}" in browser.current_url
        browser.save_screenshot(str(SCREENSHOTS / "mlflow_run_from_note.png"))
        if opened:
            browser.close()
            browser.switch_to.window(before.pop())

        # MLflow UI: the experiment's runs table shows the study's parent run ...
        experiment = "1"
        # The experiment as `workbench ui` prints it opens on its training runs, not on the
        # GenAI traces overview.
        browser.get(f"{mlflow_url}/#/experiments/{experiment}?workflowType=machine_learning")
        _wait_for_text(browser, [result.study_name, "Model training"])
        assert "/runs" in browser.current_url and "overview" not in browser.current_url
        browser.save_screenshot(str(SCREENSHOTS / "mlflow_runs.png"))
        # ... and the trial's child run page shows its name, status and test metrics.
        browser.get(f"{mlflow_url}/#/experiments/{experiment}/runs/{result.best_run_id}")
        _wait_for_text(browser, [f"trial-{result.best_trial}", "Finished"])
        browser.save_screenshot(str(SCREENSHOTS / "mlflow_trial_run.png"))
    for name in ("optuna_dashboard_studies", "optuna_dashboard_trials", "mlflow_runs"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000  # a rendered page, not blank


def test_the_study_report_opens_with_every_figure(tmp_path, browser):
    """A study with confirmation and explanations writes its report; `workbench report` writes
    it again; headless Chromium opens the file and every embedded figure has loaded."""
    from selenium.webdriver.common.by import By

    from tests.conftest import EXPERIMENTS, tiny
    from workbench.cli import main
    from workbench.study import run_study

    root = tmp_path / "mlruns"
    overrides = tiny(
        root,
        **{
            "tracking.report": True,
            "study.confirm": "{top_k: 2, seeds: 2}",
            "study.pruner": "none",
            "study.pruner_options": "{}",
            "trainer.max_epochs": 2,
        },
    )
    result = run_study(EXPERIMENTS / "mnist_cnn.yaml", trials=2, overrides=overrides)
    report = root / "reports" / "mnist_cnn.html"
    assert result.report == str(report) and report.is_file()
    written = report.stat().st_mtime_ns
    assert main(["report", "mnist_cnn", "--root", str(root)]) == 0
    assert report.stat().st_mtime_ns > written  # written again, from the stores alone

    browser.get(report.as_uri())
    page = _wait_for_text(
        browser,
        ["study mnist_cnn", "Confirmation over seeds", "The search", "The champion",
         "Explanations", "Environment", "The spec", "workbench reproduce"],
    )  # fmt: skip
    assert f"trial {result.best_trial}" in page and "± " in page
    images = browser.find_elements(By.TAG_NAME, "img")
    captions = {i.get_attribute("alt") for i in images}
    expected = {
        "per seed, mean ± CI, search score", "optimization history", "slice",
        "expected best score against the number of trials", "learning curves",
        "confusion matrix", "reliability", "shap", "lime",
    }  # fmt: skip
    assert expected <= captions, captions
    loaded = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
    )
    assert loaded and all(loaded)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "study_report.png"))
    assert (SCREENSHOTS / "study_report.png").stat().st_size > 10_000
