"""Browser check: headless Chromium logs into Label Studio and opens a pre-annotated task.

The page must show the image, the "Spurious" and "Model attention" regions from our backend
and the saliency heatmap beside the image, without JavaScript errors. A screenshot is saved
(``$ROBUSTAR_LS_SCREENSHOT`` or the test's tmp folder).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from robustar_ls.labelstudio import client as ls

from .backend_fixtures import import_with_backend

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ERROR_COLLECTOR = """
window.__pageErrors = [];
window.addEventListener('error', e => window.__pageErrors.push(String(e.message)));
window.addEventListener('unhandledrejection', e => window.__pageErrors.push(String(e.reason)));
"""


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and chromedriver are needed (Debian: chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_COLLECTOR})
    yield driver
    driver.quit()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_labeling_view_shows_regions_and_saliency(
    label_studio, dataset, backend, browser, tmp_path
):
    from selenium.webdriver.common.by import By

    client = label_studio.client("legacy")
    pid, _ = import_with_backend(label_studio, dataset, backend)
    client.actions.create(
        id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []}
    )
    task = sorted(ls.tasks_by_image(client, pid).items())[0][1]
    view = ls.ensure_influence_view(client, pid)

    browser.get(f"{label_studio.url}/user/login/")
    browser.find_element(By.NAME, "email").send_keys(label_studio.username)
    browser.find_element(By.NAME, "password").send_keys(label_studio.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    _wait_for(lambda: "/user/login" not in browser.current_url, 60, "the login")
    browser.get(f"{label_studio.url}/projects/{pid}/data?tab={view.id}&task={task.id}")

    def region_titles():
        items = browser.find_elements(By.CSS_SELECTOR, ".lsf-outliner-item__title")
        return sorted({item.text.strip() for item in items if item.text.strip()})

    titles = _wait_for(
        lambda: (t := region_titles()) and {"Spurious", "Model attention"} <= set(t) and t,
        120,
        "the Spurious and Model attention regions in the regions panel",
    )
    saliency = _wait_for(
        lambda: browser.execute_script(
            "return [...document.images].filter(i => i.src.includes('/saliency/')"
            " && i.complete && i.naturalWidth > 0).length"
        ),
        60,
        "the saliency heatmap image to load",
    )
    time.sleep(2)  # let the canvas draw the brush regions before the screenshot
    shot = Path(os.environ.get("ROBUSTAR_LS_SCREENSHOT") or tmp_path / "labeling-view.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot))

    errors = browser.execute_script("return window.__pageErrors")
    assert errors == [], f"JavaScript errors on the labeling page: {errors}"
    assert set(titles) == {"Spurious", "Model attention"}
    assert saliency >= 1
    assert "Predicted: " in browser.page_source  # the prediction summary
    assert shot.stat().st_size > 10_000
