"""Browser checks: headless Chromium (1600x1000) logs into Label Studio.

1. A pre-annotated task shows the image, the "Spurious" and "Model attention" regions from our
   backend and the saliency heatmap beside the image, without JavaScript errors. A screenshot
   is saved (``$ROBUSTAR_LS_SCREENSHOT`` or the test's tmp folder).
2. After ``robustar-ls influence``, the "Test errors" tab shows thumbnails and our columns
   (not Label Studio's defaults); a test-error task shows the influence line and the
   thumbnails of its top training tasks without scrolling, and a thumbnail opens that training
   task. Screenshots ``test-errors-tab.png`` and ``test-error-task.png`` go to
   ``$ROBUSTAR_LS_SCREENSHOT_DIR`` (the README's, from ``docs/``) or the test's tmp folder.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from robustar_ls.config import InfluenceConfig, SyntheticConfig
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
def dataset(local_files_dir: Path) -> Path:
    """Big enough for readable thumbnails and a few test errors (overrides the shared one)."""
    from robustar_ls.data.synthetic import make_dataset

    out = local_files_dir / "ds"
    make_dataset(
        out, SyntheticConfig(size=48, per_class=6, val_per_class=1, test_per_class=3, classes=2)
    )
    return out


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


# Label Studio fetches the heatmap and shows it as a blob: URL; both images must have loaded
SALIENCY_LOADED = """
const asked = performance.getEntriesByType('resource').some(e => e.name.includes('/saliency/'));
const shown = [...document.images].filter(i => (i.src.startsWith('blob:') ||
  i.src.includes('/saliency/')) && i.complete && i.naturalWidth > 0).length;
return asked && shown >= 2 ? shown : 0;
"""


def _login(browser, label_studio) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{label_studio.url}/user/login/")
    browser.find_element(By.NAME, "email").send_keys(label_studio.username)
    browser.find_element(By.NAME, "password").send_keys(label_studio.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    _wait_for(lambda: "/user/login" not in browser.current_url, 60, "the login")


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

    _login(browser, label_studio)
    browser.get(f"{label_studio.url}/projects/{pid}/data?tab={view.id}&task={task.id}")

    def region_titles():
        items = browser.find_elements(By.CSS_SELECTOR, ".lsf-outliner-item__title")
        return sorted({item.text.strip() for item in items if item.text.strip()})

    titles = _wait_for(
        lambda: (t := region_titles()) and {"Spurious", "Model attention"} <= set(t) and t,
        120,
        "the Spurious and Model attention regions in the regions panel",
    )
    saliency = _wait_for(lambda: browser.execute_script(SALIENCY_LOADED), 60, "the heatmap")
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


LOADED_THUMBS = (
    "return [...document.querySelectorAll('a.robustar-thumb img')]"
    ".filter(i => i.complete && i.naturalWidth > 0).length"
)
# the bottom of the influence line and of the thumbnails, relative to the window's height
BELOW_FOLD = """
const bottom = e => e.getBoundingClientRect().bottom;
const tops = [...document.querySelectorAll('a.robustar-thumb')].map(bottom);
const line = [...document.querySelectorAll('h1,h2,h3,h4,h5,h6')]
  .find(h => h.innerText.startsWith('Predicted ') && h.innerText.includes('WRONG'));
return {thumbs: Math.max(0, ...tops), line: line ? bottom(line) : null,
        height: window.innerHeight};
"""
# the Data Manager's column titles (Label Studio 1.23: span.lsf-th-content, without the type)
TABLE_HEADER = (
    "return [...document.querySelectorAll('.lsf-th-content')].map(e => e.innerText.trim())"
)


def _screenshot_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("ROBUSTAR_LS_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _run_influence(client, pid: int, dataset: Path, checkpoint: Path):
    from robustar_ls.data.folders import ImageFolderSplits
    from robustar_ls.labelstudio.influence_fields import write_influence
    from robustar_ls.models.checkpoint import load_checkpoint
    from robustar_ls.workflows import influence

    data = ImageFolderSplits.open(dataset)
    result = influence.score(data, load_checkpoint(checkpoint), InfluenceConfig(k=64, device="cpu"))
    assert result.test_errors, "the untrained model should make test errors"
    write_influence(client, pid, result)
    return result


def test_test_errors_tab_and_task_link_to_training_images(
    label_studio, dataset, backend, browser, tmp_path
):
    from selenium.webdriver.common.by import By

    client = label_studio.client("legacy")
    pid, _ = import_with_backend(label_studio, dataset, backend)
    _run_influence(client, pid, dataset, tmp_path / "model.pt")  # the backend's checkpoint
    views = ls.ensure_views(client, pid)
    errors_tab = views[ls.TEST_ERRORS_VIEW_TITLE]
    by_split = ls.tasks_by_split(client, pid)
    train_ids = {t.id for t in by_split["train"].values()}
    errors = sorted(
        (t for t in by_split["test"].values() if t.data["outcome"] == "wrong"),
        key=lambda t: -t.data["confidence"],
    )
    task = errors[0]
    top = task.data["top_training_tasks"]
    assert top and set(top) <= train_ids
    shots = _screenshot_dir(tmp_path)

    # the "Test errors" tab: our columns, thumbnails, no default clutter
    _login(browser, label_studio)
    browser.get(f"{label_studio.url}/projects/{pid}/data?tab={errors_tab.id}")
    try:
        header = _wait_for(
            lambda: (h := browser.execute_script(TABLE_HEADER)) and "predicted" in h and h,
            120,
            "the Data Manager table with our columns",
        )
    finally:
        browser.save_screenshot(str(shots / "test-errors-tab.png"))
    _wait_for(
        lambda: (
            browser.execute_script(
                "return [...document.images].filter(i => i.src.includes('/data/local-files/')"
                " && i.complete && i.naturalWidth > 0).length"
            )
            >= len(errors)
        ),
        60,
        "a thumbnail per test error in the table",
    )
    time.sleep(1)
    browser.save_screenshot(str(shots / "test-errors-tab.png"))
    for column in ("image", "true_class", "predicted", "confidence", "outcome", "influence"):
        assert column in header, (column, header)
    for hidden in ("Inner ID", "Annotated by", "Created at", "related_html", "saliency"):
        assert hidden not in header, (hidden, header)

    # a test-error task: the influence line and its top training images, above the fold
    browser.get(f"{label_studio.url}/projects/{pid}/data?tab={errors_tab.id}&task={task.id}")
    loaded = _wait_for(
        lambda: (n := browser.execute_script(LOADED_THUMBS)) >= len(top) and n,
        120,
        f"the {len(top)} thumbnails of the top training tasks to load",
    )
    assert loaded == len(top)
    time.sleep(2)
    browser.save_screenshot(str(shots / "test-error-task.png"))
    fold = browser.execute_script(BELOW_FOLD)
    assert fold["line"] is not None and fold["line"] <= fold["height"], fold
    assert 0 < fold["thumbs"] <= fold["height"], fold
    page_errors = browser.execute_script("return window.__pageErrors")
    assert page_errors == [], f"JavaScript errors on the labeling page: {page_errors}"

    # a thumbnail opens its training task
    browser.find_elements(By.CSS_SELECTOR, "a.robustar-thumb")[0].click()
    _wait_for(lambda: f"task={top[0]}" in browser.current_url, 60, "the training task's URL")
    trained = next(t for t in by_split["train"].values() if t.id == top[0])
    _wait_for(
        lambda: f"training image {trained.data['relpath']}" in browser.page_source,
        120,
        "the training task's labeling view",
    )
