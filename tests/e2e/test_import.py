"""`robustar-ls import` and the client layer against a real Label Studio 1.23 server."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from robustar_ls.cli import main
from robustar_ls.config import ImportConfig, LabelStudioConfig, SyntheticConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.config import default_label_config
from robustar_ls.labelstudio.project_import import import_project

from .listing import listed_projects, listed_tasks

pytestmark = pytest.mark.e2e

BACKEND_AUTH = ("robustar", "backend-secret")


def _title(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BackendStub:
    """Answers /health and /setup like an ML backend (only for the connection test)."""

    url: str
    auth_seen: list[str | None] = field(default_factory=list)


@pytest.fixture(scope="module")
def backend_stub() -> Iterator[BackendStub]:
    app = Flask("backend-stub")
    expected = "Basic " + base64.b64encode(":".join(BACKEND_AUTH).encode()).decode()
    port = _free_port()
    stub = BackendStub(url=f"http://127.0.0.1:{port}")

    @app.get("/health")
    def health():
        return jsonify(status="UP", model_class="Stub")

    @app.post("/setup")
    def setup():
        header = request.headers.get("Authorization")
        stub.auth_seen.append(header)
        if header != expected:
            return jsonify(error="unauthorised"), 401
        return jsonify(model_version="stub-1")

    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stub
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def dataset(local_files_dir: Path) -> Path:
    """A 16 px, 2-class dataset (3 training images per class) under the document root."""
    from robustar_ls.data.synthetic import make_dataset

    out = local_files_dir / "ds"
    make_dataset(
        out,
        SyntheticConfig(size=16, per_class=3, val_per_class=1, test_per_class=1, classes=2),
    )
    return out


def _train_relpaths(data: Path) -> set[str]:
    return {s.relpath for s in ImageFolderSplits.open(data).splits["train"]}


def _images(data: Path) -> dict[str, set[str]]:
    splits = ImageFolderSplits.open(data).splits
    return {split: {s.relpath for s in splits[split]} for split in ("train", "val", "test")}


def _count_tasks(client, project_id: int) -> int:
    return sum(1 for _ in listed_tasks(client, project=project_id, include="id"))


def _run_import(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    code = main(["import", *argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.postgresql
def test_import_creates_everything_and_reruns_add_only_new_images(
    label_studio, dataset, backend_stub, monkeypatch, capsys
):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    monkeypatch.setenv("BASIC_AUTH_USER", BACKEND_AUTH[0])
    monkeypatch.setenv("BASIC_AUTH_PASS", BACKEND_AUTH[1])
    monkeypatch.setenv("ROBUSTAR_LS_SECRET", "import-test-secret")
    title = _title("import")
    argv = [
        "--data", str(dataset), "--label-studio-url", label_studio.url, "--project", title,
        "--backend-url", backend_stub.url, "--document-root", str(label_studio.document_root),
        "--batch-size", "4", "--json", "-q",
    ]  # fmt: skip
    code, summary, err = _run_import(argv, capsys)
    assert code == 0, err
    relpaths = _train_relpaths(dataset)
    images = _images(dataset)
    total = sum(map(len, images.values()))
    assert all(images.values()) and total > len(relpaths)  # val/ and test/ are not empty
    assert (summary["created_tasks"], summary["existing_tasks"]) == (total, 0)
    assert summary["splits"] == {split: len(found) for split, found in images.items()}

    client = label_studio.client("legacy")
    pid = summary["project_id"]
    project = client.projects.get(pid)
    assert project.title == title
    assert project.label_config.strip() == default_label_config().strip()

    by_split = ls.tasks_by_split(client, pid)
    assert {split: set(found) for split, found in by_split.items()} == images  # every split
    assert _count_tasks(client, pid) == total
    for split, found in by_split.items():
        for task in found.values():
            assert task.data["split"] == split
            assert f"/{dataset.name}/{split}/" in task.data["image"]
    tasks = ls.tasks_by_image(client, pid)
    assert set(tasks) == relpaths
    relpath, task = sorted(tasks.items())[0]
    assert task.data["true_class"] == relpath.split("/")[0]
    assert task.data["summary"] == f"True class: {relpath.split('/')[0]} (training image {relpath})"
    # no score yet: no value (an empty Data Manager cell), not a made-up 0
    assert task.data["influence"] is None and task.data["influence_rank"] is None
    assert task.data["confidence"] is None and task.data["influence_version"] is None
    assert task.data["saliency"].startswith(backend_stub.url + "/saliency/")
    image = requests.get(
        label_studio.url + task.data["image"], headers=label_studio.auth_headers(), timeout=30
    )
    assert image.status_code == 200
    assert image.content == (dataset / "train" / relpath).read_bytes()

    storages = list(client.import_storage.local.list(project=pid))
    assert [s.id for s in storages] == [summary["storage_id"]]
    views = {v.data.get("title"): v for v in client.views.list(project=pid)}
    assert views[ls.INFLUENCE_VIEW_TITLE].id == summary["view_id"]
    wanted = {spec.title: spec.ordering for spec in ls.VIEWS}
    assert len(wanted) == 4 and set(wanted) <= set(views)
    for tab, ordering in wanted.items():
        assert views[tab].data["ordering"] == list(ordering), tab
        assert summary["views"][tab] == views[tab].id
    assert views[ls.INFLUENCE_VIEW_TITLE].data["ordering"] == ["-tasks:data.influence"]
    assert views[ls.TEST_ERRORS_VIEW_TITLE].data["ordering"] == ["-tasks:data.confidence"]

    def in_view(tab: str) -> set[tuple[str, str]]:
        found = listed_tasks(client, project=pid, view=views[tab].id, fields="task_only")
        return {(t.data["split"], t.data["relpath"]) for t in found}

    assert in_view(ls.INFLUENCE_VIEW_TITLE) == {("train", r) for r in relpaths}
    assert in_view(ls.TEST_VIEW_TITLE) == {("test", r) for r in images["test"]}
    assert in_view(ls.TEST_ERRORS_VIEW_TITLE) == set()  # no prediction yet
    backends = list(client.ml.list(project=pid))
    assert [b.id for b in backends] == [summary["ml_backend_id"]]
    assert backends[0].is_interactive and backends[0].auth_method == "BASIC_AUTH"
    assert backends[0].url == backend_stub.url and backends[0].state == "CO"
    assert backend_stub.auth_seen and backend_stub.auth_seen[-1].startswith("Basic ")
    hooks = [h.url for h in client.webhooks.list(project=str(pid))]
    assert hooks.count(backend_stub.url + "/webhook") == 1

    # a second run changes nothing and creates nothing
    code, again, err = _run_import(argv, capsys)
    assert code == 0, err
    assert (again["created_tasks"], again["existing_tasks"]) == (0, total)
    assert again["refreshed_links"] == 0
    for key in ("project_id", "storage_id", "view_id", "views", "ml_backend_id"):
        assert again[key] == summary[key]
    assert _count_tasks(client, pid) == total
    assert len(list(client.views.list(project=pid))) == len(views)
    assert [p.id for p in listed_projects(client, title=title) if p.title == title] == [pid]
    assert len(list(client.ml.list(project=pid))) == 1
    hooks = [h.url for h in client.webhooks.list(project=str(pid))]
    assert hooks.count(backend_stub.url + "/webhook") == 1

    # the heatmaps moved (e.g. another backend address): existing tasks get the new links only
    ls.update_task_data(client, pid, {task.id: {"influence": 7.5}})
    code, moved, err = _run_import([*argv, "--saliency-base-url", "http://moved.test:9"], capsys)
    assert code == 0, err
    assert moved["refreshed_links"] == total and moved["created_tasks"] == 0
    after = ls.tasks_by_image(client, pid)[relpath].data
    assert after["saliency"].startswith("http://moved.test:9/saliency/")
    assert after["influence"] == 7.5 and after["image"] == task.data["image"]

    # a new image gets a task on the next run
    new = dataset / "train" / relpath.split("/")[0] / "zz-new image.png"
    shutil.copyfile(dataset / "train" / relpath, new)
    code, third, err = _run_import(argv, capsys)
    assert code == 0, err
    assert (third["created_tasks"], third["existing_tasks"]) == (1, total)
    assert set(ls.tasks_by_image(client, pid)) == relpaths | {f"{relpath.split('/')[0]}/{new.name}"}


@pytest.mark.postgresql
def test_update_round_trip_and_numeric_view_order_with_pat(label_studio, dataset):
    client = ls.connect(label_studio.url, label_studio.pat)  # a personal access token
    ls_cfg = LabelStudioConfig(
        url=label_studio.url,
        project=_title("influence-order"),
        document_root=str(label_studio.document_root),
    )
    summary = import_project(client, ls_cfg, ImportConfig(data=str(dataset)))
    pid, view_id = summary["project_id"], summary["view_id"]
    before = ls.tasks_by_image(client, pid)
    # values whose text order differs from their numeric order
    values = [9, 10, 100, 2.5, -1, 0.25]
    assert len(values) == len(before)
    updates = {
        task.id: {"influence": v, "influence_rank": i, "influence_explains": f"drives {v}"}
        for i, (v, task) in enumerate(
            zip(values, sorted(before.values(), key=lambda t: t.id), strict=True)
        )
    }
    result = ls.update_task_data(client, pid, updates)
    assert (result.updated, result.unchanged) == (len(values), 0)
    after = ls.tasks_by_image(client, pid)
    for relpath, task in after.items():
        assert task.data == {**before[relpath].data, **updates[task.id]}
    assert ls.update_task_data(client, pid, updates).updated == 0

    def view_order() -> list:
        tasks = listed_tasks(client, project=pid, view=view_id, fields="task_only")
        return [t.data["influence"] for t in tasks]

    assert view_order() == sorted(values, reverse=True)
    # numbers written as strings sort numerically too (the view's column type casts them)
    as_text = {tid: {"influence": str(f["influence"])} for tid, f in updates.items()}
    ls.update_task_data(client, pid, as_text)
    assert view_order() == [str(v) for v in sorted(values, reverse=True)]


@pytest.mark.postgresql
def test_influence_view_order_of_unscored_tasks(label_studio, dataset):
    """Where "Most influential first" lists tasks without a score: ``influence`` null (as
    import and a ``--top`` rerun write it) or no such key at all (a task imported by hand).

    Label Studio 1.23 orders ``-tasks:data.influence`` DESC NULLS LAST, so on PostgreSQL every
    unscored task follows the scored ones. On SQLite a missing key is NULL (last) but a JSON
    null sorts as 0: Django's SQLite key transform reads it as the text 'null', which the
    Number column's CAST turns into 0.0, so null tasks land between positive and negative
    scores."""
    client = label_studio.client("legacy")
    ls_cfg = LabelStudioConfig(
        url=label_studio.url,
        project=_title("unscored"),
        document_root=str(label_studio.document_root),
    )
    summary = import_project(client, ls_cfg, ImportConfig(data=str(dataset)))
    pid, view_id = summary["project_id"], summary["view_id"]
    tasks = sorted(ls.tasks_by_image(client, pid).values(), key=lambda t: t.id)
    assert len(tasks) == 6
    scores = {task.id: {"influence": v} for task, v in zip(tasks, [0.5, 2.0, -1.0], strict=False)}
    ls.update_task_data(client, pid, scores)  # three tasks keep influence null
    keyless = {k: v for k, v in tasks[-1].data.items() if not k.startswith("influence")}
    client.projects.import_tasks(id=pid, request=[{**keyless, "relpath": "keyless.png"}])

    ordered = listed_tasks(client, project=pid, view=view_id, fields="task_only")
    values = [t.data.get("influence") for t in ordered]
    keyless_at = [t.data["relpath"] for t in ordered].index("keyless.png")
    if label_studio.database == "postgresql":
        assert values == [2.0, 0.5, -1.0, None, None, None, None] and keyless_at >= 3
    else:
        assert values == [2.0, 0.5, None, None, None, -1.0, None] and keyless_at == 6


def test_legacy_token_and_pat_reach_the_same_user(label_studio):
    for token in (label_studio.legacy_token, label_studio.pat):
        assert ls.connect(label_studio.url, token).users.whoami().email == label_studio.username


def test_bad_token_and_unreachable_url_are_explained(label_studio, dataset, monkeypatch, capsys):
    tampered_pat = label_studio.pat[:-4] + (
        "AAAA" if not label_studio.pat.endswith("AAAA") else "BBBB"
    )
    for token in ("not-a-valid-token", tampered_pat):
        with pytest.raises(ls.LabelStudioError, match="API key was refused"):
            ls.connect(label_studio.url, token)
    closed = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ls.LabelStudioError, match=f"cannot reach Label Studio at {closed}"):
        ls.connect(closed, label_studio.legacy_token)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-a-valid-token")
    title = _title("bad-token")
    code, _, err = _run_import(
        ["--data", str(dataset), "--label-studio-url", label_studio.url, "--project", title,
         "--document-root", str(label_studio.document_root), "-q"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "API key was refused" in err
    assert ls.find_project(label_studio.client("legacy"), title) is None


def test_wrong_document_root_is_explained_and_a_rerun_repairs(
    label_studio, dataset, monkeypatch, capsys
):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    title = _title("wrong-root")
    common = ["--data", str(dataset), "--label-studio-url", label_studio.url, "--project", title]
    # inside the server's root, but not the root itself: image URLs would point elsewhere
    code, _, err = _run_import([*common, "--document-root", str(dataset.parent), "-q"], capsys)
    assert code == 2
    assert "--document-root" in err and "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" in err
    client = label_studio.client("legacy")
    project = ls.find_project(client, title)
    assert project is not None and _count_tasks(client, project.id) == 0  # no broken tasks

    code, summary, err = _run_import(
        [*common, "--document-root", str(label_studio.document_root), "--json", "-q"], capsys
    )
    assert code == 0, err
    assert summary["project_id"] == project.id
    assert summary["created_tasks"] == sum(map(len, _images(dataset).values()))
    assert len(list(client.import_storage.local.list(project=project.id))) == 1


def test_unreachable_backend_is_explained(label_studio):
    client = label_studio.client("legacy")
    project = ls.ensure_project(client, _title("no-backend"), default_label_config())
    closed = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ls.LabelStudioError, match="Start the backend first"):
        ls.ensure_ml_backend(client, project.id, closed)
    assert list(client.ml.list(project=project.id)) == []


def test_document_root_defaults_to_label_studios_variable(
    label_studio, dataset, monkeypatch, capsys
):
    """The brief's contract: `import --data --label-studio-url --project` without --document-root
    works when Label Studio's document-root variable is set in the environment."""
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(label_studio.document_root))
    argv = ["--data", str(dataset), "--label-studio-url", label_studio.url]
    code, summary, err = _run_import([*argv, "--project", _title("envroot"), "--json"], capsys)
    assert code == 0, err
    assert summary["created_tasks"] == sum(map(len, _images(dataset).values()))
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    code, _, err = _run_import([*argv, "--project", _title("noroot")], capsys)
    assert code == 2 and "--document-root" in err


def test_import_and_a_sync_dry_run_load_no_torch(label_studio, dataset):
    from tests.test_start_fast import run_command

    title = _title("no-torch")
    argv = ["--data", str(dataset), "--label-studio-url", label_studio.url, "--project", title]
    argv += ["--json", "-q"]
    imported = run_command(
        ["import", *argv, "--document-root", str(label_studio.document_root)],
        api_key=label_studio.legacy_token,
    )
    assert imported["rc"] == 0, imported["stdout"]
    assert imported["loaded"] == []  # neither torch, torchvision, pandas nor the label interface
    dry = ["sync-train", *argv, "--checkpoint", str(dataset / "none.pt"), "--dry-run"]
    synced = run_command(dry, api_key=label_studio.legacy_token)
    assert synced["rc"] == 0, synced["stdout"]
    assert '"dry_run": true' in synced["stdout"]
    assert {"torch", "torchvision", "pandas"}.isdisjoint(synced["loaded"])
