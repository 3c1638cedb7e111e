"""The backend's own page, ``GET /``: the task centre (behind basic auth when it is set).

One HTML page, no build step, no script, no CDN: the served model version; the training job's
state and progress bar (the page refreshes itself every few seconds while a job runs); the
accuracy of every split per model version along the served checkpoint's lineage (out-of-domain
``test`` against in-distribution ``val``/``train``: the shortcut closing) and the loss terms of
the last training per epoch, both inline SVG (``plots.py``); the last sync's counts; a link to
the Label Studio project.

The page only renders: it reads what others keep and writes nothing. The project's id is the
one Label Studio named last (:mod:`robustar_ls.backend.project_memory`, noted by the app's
views); until one was seen the page links to Label Studio's project list.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from flask import Flask, Response

from robustar_ls.backend.plots import SPLIT_COLOURS, line_plot
from robustar_ls.backend.prefetch_state import prefetch_status
from robustar_ls.models.history import lineage, read_history
from robustar_ls.train.progress import progress_text

REFRESH_SECONDS = 3
LOSS_TERMS = ("loss", "ce", "ce_paired", "align")
VERSION_ROWS = 10  # the newest versions listed as text
STYLE = """
body{font-family:sans-serif;margin:24px;max-width:1260px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px}
.muted{color:#666}.card{border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin:10px 0}
progress{width:420px;height:18px;vertical-align:middle}
.plots{display:flex;flex-wrap:wrap;gap:16px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 10px;text-align:right}
.failed{color:#b00}.succeeded{color:#080}.running{color:#06c}
"""


def register_page(app: Flask, state: Any) -> None:
    """``GET /`` (endpoint ``page``): the page of ``state`` (the app's ``BackendState``)."""

    @app.get("/")
    def page():
        html = render_page(page_data(state, state.project.read()))
        response = Response(html, mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        return response


def page_data(state: Any, project: int | None) -> dict[str, Any]:
    """What the page shows, from the predictor, the job status and the history file."""
    cfg = state.cfg
    version = state.predictor.model_version
    chain = lineage(read_history(cfg.checkpoint), version) if cfg.checkpoint else []
    url = (cfg.label_studio_url or "").rstrip("/")
    link = f"{url}/projects/{project}/data" if project is not None else f"{url}/projects/"
    return {
        "version": version,
        "checkpoint": Path(cfg.checkpoint).name if cfg.checkpoint else "",
        "training": state.jobs.status() if state.jobs is not None else None,
        "chain": chain,
        "project_title": cfg.project,
        "project_link": link if url else "",
        "prefetch": prefetch_status(getattr(state, "prefetcher", None)),
    }


def accuracy_series(chain: list[dict[str, Any]]) -> tuple[list[str], dict[str, list]]:
    """x labels (versions) and ``{split: [accuracy per version]}`` along the lineage; the
    first run's "before" is its parent's point."""
    labels: list[str] = []
    rows: list[dict[str, float]] = []
    if chain and chain[0].get("before") and chain[0].get("parent_version"):
        labels.append(chain[0]["parent_version"])
        rows.append(chain[0]["before"])
    for entry in chain:
        labels.append(entry["version"])
        rows.append(entry.get("after") or {})
    found = {split for row in rows for split in row}
    splits = [s for s in ("test", "val", "train") if s in found] + sorted(
        found - {"test", "val", "train"}
    )
    return labels, {s: [row.get(s) for row in rows] for s in splits}


def loss_series(entry: dict[str, Any]) -> tuple[list[str], dict[str, list]]:
    """x labels (epochs) and ``{term: [value per epoch]}`` of one training."""
    epochs = entry.get("epochs") or []
    terms = [t for t in LOSS_TERMS if any(t in row for row in epochs)]
    labels = [str(row.get("epoch", i + 1)) for i, row in enumerate(epochs)]
    return labels, {t: [row.get(t) for row in epochs] for t in terms}


def _progress_html(training: dict[str, Any] | None) -> str:
    if training is None:
        return (
            '<p class="muted">Start Training is not enabled on this backend '
            "(<code>robustar-ls serve --data DATA --project TITLE</code>).</p>"
        )
    state = escape(str(training.get("state")))
    parts = [f'<p>Training job: <b id="training-state" class="{state}">{state}</b>']
    if training.get("job_id"):
        parts.append(
            f' <span class="muted">({escape(str(training["job_id"]))}, started '
            f"{escape(str(training.get('started_at')))})</span>"
        )
    parts.append("</p>")
    record = training.get("progress")
    if record and training.get("state") == "running":
        fraction = float(record.get("fraction") or 0.0)
        parts.append(
            f'<p><progress id="training-progress" max="1" value="{fraction:.4f}"></progress> '
            f"<b>{fraction:.0%}</b> {escape(str(record.get('phase')))}: "
            f'<span id="progress-text">{escape(progress_text(record))}</span></p>'
        )
    elif training.get("state") == "running":
        parts.append('<p><progress id="training-progress" max="1"></progress> starting</p>')
    if training.get("error"):
        parts.append(f'<p class="failed">{escape(str(training["error"]))}</p>')
    return "".join(parts)


def _plots_html(chain: list[dict[str, Any]]) -> str:
    if not chain:
        return (
            '<p class="muted">No model history yet: it is written beside the checkpoint '
            "whenever train, sync-train or Start Training saves it.</p>"
        )
    labels, series = accuracy_series(chain)
    accuracy = line_plot(
        "accuracy",
        "Accuracy per model version",
        labels,
        series,
        y_label="accuracy",
        y_range=(0.0, 1.0),
        colours=SPLIT_COLOURS,
    )
    last = next((e for e in reversed(chain) if e.get("epochs")), None)
    loss = ""
    if last is not None:
        epochs, terms = loss_series(last)
        title = f"Loss terms per epoch ({last['version']})"
        loss = line_plot("loss", title, epochs, terms, y_label="loss")
    return f'<div class="plots">{accuracy}{loss}</div>'


def _versions_html(chain: list[dict[str, Any]]) -> str:
    """The lineage as text, newest first: accuracies before → after, the worst group, and
    how much of the model's saliency fell on the masked (spurious) pixels."""
    if not chain:
        return ""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("version", "how", "test", "val", "test worst group", "saliency in masks")
    )
    rows = [
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in _version_cells(entry)) + "</tr>"
        for entry in reversed(chain[-VERSION_ROWS:])
    ]
    return f'<table id="versions"><tr>{head}</tr>{"".join(rows)}</table>'


def _version_cells(entry: dict[str, Any]) -> list[str]:
    before, after = entry.get("before") or {}, entry.get("after") or {}
    test_groups = ((entry.get("groups") or {}).get("after") or {}).get("test") or {}
    attention = entry.get("saliency_in_masks") or {}
    how = entry.get("recipe") or entry.get("kind") or ""
    if entry.get("annotated"):
        how += f", {entry['annotated']} masks"
    return [
        str(entry.get("version")),
        how,
        _change(before.get("test"), after.get("test")),
        _change(before.get("val"), after.get("val")),
        _number(test_groups.get("worst_group")),
        _change(attention.get("before"), attention.get("after")),
    ]


def _number(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"


def _change(before: Any, after: Any) -> str:
    """``0.250 → 0.910``, or the one value there is ("" for none: nothing to show)."""
    if before is None or after is None:
        return _number(after if before is None else before)
    return f"{_number(before)} → {_number(after)}"


def _sync_html(chain: list[dict[str, Any]]) -> str:
    last = next((e for e in reversed(chain) if e.get("sync")), None)
    if last is None:
        return '<p class="muted">No sync from Label Studio recorded yet.</p>'
    counts = last["sync"]
    head = "".join(f"<th>{escape(str(k))}</th>" for k in counts)
    cells = "".join(f"<td>{escape(str(v))}</td>" for v in counts.values())
    return (
        f"<p>Before {escape(str(last['version']))} ({escape(str(last.get('created_at')))}), "
        f"{escape(str(last.get('annotated')))} annotated images:</p>"
        f'<table id="sync-counts"><tr>{head}</tr><tr>{cells}</tr></table>'
    )


def _prefetch_html(status: dict[str, Any] | None) -> str:
    """One line: the prefetch of the most influential tasks' predictions and its progress."""
    state = escape(str((status or {}).get("state", "disabled")))
    if state == "disabled":
        return '<p class="muted">Prefetch is off (<code>serve --prefetch N</code>).</p>'
    top = escape(str(status.get("top")))
    line = f"<p>Prefetch (test errors and the top {top} tasks by influence): "
    line += f'<b id="prefetch-state" class="{state}">{state}</b>'
    if status.get("total"):
        done = int(status.get("done") or 0) + int(status.get("skipped") or 0)
        line += (
            f' <span id="prefetch-progress">{done}/{escape(str(status["total"]))}</span> tasks '
            f"hold a prediction of {escape(str(status.get('model_version')))}"
        )
    if status.get("error"):
        line += f' <span class="muted">{escape(str(status["error"]))}</span>'
    return line + "</p>"


def _influence_html(status: dict[str, Any] | None) -> str:
    """One line: the influence rerun for the served classifier version (``serve --data``)."""
    influence = (status or {}).get("influence")
    if not isinstance(influence, dict):
        return ""
    state = escape(str(influence.get("state")))
    version = escape(str(influence.get("model_version")))
    line = f'<p>Influence for {version}: <b id="influence-state" class="{state}">{state}</b>'
    if state == "running":
        step = f"{influence.get('phase')}"
        if influence.get("total"):
            step += f" {influence.get('done') or 0}/{influence['total']}"
        line += f' <span id="influence-progress">{escape(step)}</span>'
    elif state == "current":
        line += ' <span class="muted">(the tasks already hold this version\'s ranks)</span>'
    elif state == "done":
        line += (
            f" · {escape(str(influence.get('scored')))} training tasks ranked, "
            f"{escape(str(influence.get('test_errors')))} test errors"
        )
    if influence.get("error"):
        line += f' <span class="failed">{escape(str(influence["error"]))}</span>'
    return line + "</p>"


def _busy(data: dict[str, Any]) -> bool:
    """A job, an influence run or a prefetch runs: the page refreshes itself."""
    prefetch = data.get("prefetch") or {}
    return any(
        isinstance(part, dict) and part.get("state") == "running"
        for part in (data["training"], prefetch, prefetch.get("influence"))
    )


def render_page(data: dict[str, Any]) -> str:
    """The whole HTML document."""
    training = data["training"]
    running = _busy(data)
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if running else ""
    link = ""
    if data["project_link"]:
        title = escape(str(data["project_title"] or "Label Studio"))
        link = f'<a id="label-studio-link" href="{escape(data["project_link"])}">{title}</a>'
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>robustar-ls task centre</title><style>{STYLE}</style></head><body>"
        f"<h1>robustar-ls task centre</h1>"
        f'<p>Serving <b id="model-version">{escape(str(data["version"]))}</b> '
        f'<span class="muted">{escape(data["checkpoint"])}</span>'
        f"{' · Label Studio project ' + link if link else ''}</p>"
        f'<div class="card">{_progress_html(training)}{_influence_html(data.get("prefetch"))}'
        f"{_prefetch_html(data.get('prefetch'))}</div>"
        f"<h2>Accuracy and loss</h2>{_plots_html(data['chain'])}"
        f"<h2>Model versions</h2>{_versions_html(data['chain'])}"
        f"<h2>Last sync</h2>{_sync_html(data['chain'])}"
        "</body></html>"
    )
