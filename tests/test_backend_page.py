"""The task-centre page (GET /): progress, accuracy and loss plots, sync counts, the link."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from backend_support import FakeJobs, make_backend

from robustar_ls.backend.app import create_app
from robustar_ls.backend.page import accuracy_series
from robustar_ls.backend.plots import line_plot
from robustar_ls.models.history import append_entry

SVG = "{http://www.w3.org/2000/svg}"


def _history(checkpoint, version):
    """Two runs: a plain training (v1-root), then a paired one ending at the served version."""
    append_entry(
        checkpoint,
        {"version": "v1-root", "parent_version": None, "after": {"val": 0.95, "test": 0.3}},
    )
    append_entry(
        checkpoint,
        {
            "version": version,
            "parent_version": "v1-root",
            "before": {"val": 0.95, "test": 0.3},
            "after": {"val": 0.96, "test": 0.81},
            "epochs": [
                {"epoch": 1, "loss": 0.9, "ce": 0.5, "ce_paired": 0.3, "align": 0.1},
                {"epoch": 2, "loss": 0.6, "ce": 0.3, "ce_paired": 0.2, "align": 0.05},
            ],
            "annotated": 4,
            "recipe": "rebuild",
            "groups": {"before": None, "after": {"test": {"worst_group": 0.62}}},
            "saliency_in_masks": {"before": 0.71, "after": 0.12},
            "sync": {"added": 4, "updated": 0, "removed": 1, "unchanged": 2},
            "created_at": "2026-11-29T18:00:00+00:00",
        },
    )


def _svgs(html: str) -> dict[str, ET.Element]:
    found = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    trees = [ET.fromstring(svg) for svg in found]  # each is well-formed XML
    return {tree.get("data-plot"): tree for tree in trees}


def _series(svg: ET.Element) -> dict[str, int]:
    """{series name: number of points}"""
    return {
        g.get("data-series"): len(g.findall(f"{SVG}circle"))
        for g in svg.iter(f"{SVG}g")
        if g.get("class") == "series"
    }


def test_page_shows_version_plots_and_sync(tmp_path):
    backend = make_backend(tmp_path, jobs=FakeJobs())
    _history(backend.checkpoint, backend.version)
    response = backend.client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert f'<b id="model-version">{backend.version}</b>' in html
    plots = _svgs(html)
    # the parent's point (before), then the served version (after)
    assert _series(plots["accuracy"]) == {"test": 2, "val": 2}
    assert _series(plots["loss"]) == {"loss": 2, "ce": 2, "ce_paired": 2, "align": 2}
    assert 'id="sync-counts"' in html and "<td>4</td>" in html
    versions = re.search(r'<table id="versions">.*?</table>', html, flags=re.S).group(0)
    rows = re.findall(r"<tr>(.*?)</tr>", versions)
    assert len(rows) == 3  # the header, the served version, its parent (newest first)
    cells = re.findall(r"<td>(.*?)</td>", rows[1])
    assert cells == [backend.version, "rebuild, 4 masks", "0.300 → 0.810", "0.950 → 0.960",
                     "0.620", "0.710 → 0.120"]  # fmt: skip
    root = re.findall(r"<td>(.*?)</td>", rows[2])
    assert root[0] == "v1-root" and root[2:] == ["0.300", "0.950", "", ""]  # no placeholders
    assert 'http-equiv="refresh"' not in html  # nothing running: no refresh
    assert 'href="http://127.0.0.1:9/projects/"' in html  # no project id seen yet


def test_page_while_training_shows_progress_and_refreshes(tmp_path):
    jobs = FakeJobs()
    backend = make_backend(tmp_path, jobs=jobs)
    jobs.start({})
    jobs.progress = {
        "phase": "train",
        "epoch": 2,
        "epochs": 3,
        "step": 5,
        "steps": 10,
        "fraction": 0.5,
        "eta_seconds": 83.0,
        "last_loss": 0.4123,
    }
    html = backend.client.get("/").get_data(as_text=True)
    assert 'http-equiv="refresh"' in html
    assert '<progress id="training-progress" max="1" value="0.5000">' in html
    assert "epoch 2/3, step 5/10, loss 0.412, ETA 1m23s" in html


def test_page_links_to_the_project_label_studio_named(tmp_path):
    backend = make_backend(tmp_path)
    backend.client.post("/setup", json={"project": "7.1700000000", "schema": ""})
    html = backend.client.get("/").get_data(as_text=True)
    assert 'href="http://127.0.0.1:9/projects/7/data"' in html
    assert "Start Training is not enabled" in html
    # another worker (another app on the same cache dir) links to it too
    other = create_app(backend.cfg, predictor=backend.predictor).test_client()
    assert 'href="http://127.0.0.1:9/projects/7/data"' in other.get("/").get_data(as_text=True)


def test_accuracy_series_without_a_before():
    labels, series = accuracy_series([{"version": "v1", "after": {"train": 1.0, "test": 0.5}}])
    assert labels == ["v1"] and series == {"test": [0.5], "train": [1.0]}


def test_plot_escapes_text_and_skips_missing_points():
    svg = line_plot("p", "<b>title</b>", ["a&b", "c"], {"x<y": [0.5, None]})
    tree = ET.fromstring(svg)
    assert tree.find(f"{SVG}title").text == "<b>title</b>"
    assert _series(tree) == {"x<y": 1}


def test_plot_of_non_negative_values_starts_at_zero():
    svg = line_plot("p", "t", ["1", "2"], {"loss": [0.2, 0.1]})
    ticks = [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert "0.00" in ticks and not any(t.startswith("-") for t in ticks if t)


def _page_with_prefetch(influence: dict) -> str:
    from robustar_ls.backend.page import render_page

    prefetch = {"state": "idle", "top": 100, "influence": influence}
    data = {"training": None, "version": "v2-b", "checkpoint": "m.pt", "project_link": None,
            "project_title": None, "prefetch": prefetch, "chain": []}  # fmt: skip
    return render_page(data)


def test_page_shows_the_influence_rerun_and_refreshes_while_it_runs():
    running = {"state": "running", "model_version": "v2-b", "phase": "gradients (train)",
               "done": 3, "total": 12}  # fmt: skip
    html = _page_with_prefetch(running)
    assert '<b id="influence-state" class="running">running</b>' in html
    assert '<span id="influence-progress">gradients (train) 3/12</span>' in html
    assert "Influence for v2-b" in html and 'http-equiv="refresh"' in html
    done = {"state": "done", "model_version": "v2-b", "scored": 800, "test_errors": 57}
    html = _page_with_prefetch(done)
    assert "800 training tasks ranked, 57 test errors" in html
    assert 'http-equiv="refresh"' not in html
    failed = {"state": "failed", "error": "DatasetError: <no test split>"}
    assert "DatasetError: &lt;no test split&gt;" in _page_with_prefetch(failed)
