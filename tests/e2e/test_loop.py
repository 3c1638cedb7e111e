"""The whole loop, as a user runs it: real Label Studio, `robustar-ls serve` under gunicorn,
and only label-studio-sdk calls (plus our CLI) in between.

import → Label Studio fetches predictions → smart tools → annotations → sync-train → new model
version served → "Start Training" → influence-ranked view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch

from robustar_ls.cli import main
from robustar_ls.config import SyntheticConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.brush import mask_to_rle, rle_to_mask
from robustar_ls.labelstudio.results import BrushRegion
from robustar_ls.models.checkpoint import read_version, save_checkpoint
from robustar_ls.models.zoo import create_classifier
from robustar_ls.workflows.label_studio import free_port, log_tail, stop_process

from .listing import listed_tasks

pytestmark = pytest.mark.e2e

SIZE = 16
AUTH = ("robustar", "loop-pass")


def _retrieve_predictions(client, project_id: int) -> None:
    """Ask Label Studio to fetch predictions for every task (the Data Manager action)."""
    client.actions.create(
        id="retrieve_tasks_predictions",
        project=project_id,
        selected_items={"all": True, "excluded": []},
    )


def _versions_of_predictions(client, task_ids) -> dict[int, set[str]]:
    return {
        task_id: {p.model_version for p in client.predictions.list(task=task_id)}
        for task_id in task_ids
    }


@pytest.fixture
def loop(label_studio, local_files_dir, tmp_path, monkeypatch) -> Iterator[SimpleNamespace]:
    """A tiny dataset under the document root, a checkpoint, and `robustar-ls serve` running."""
    data = local_files_dir / "shapes"
    make_dataset(
        data,
        SyntheticConfig(size=SIZE, per_class=4, val_per_class=2, test_per_class=3, classes=2),
    )
    classes = ImageFolderSplits.open(data).classes
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(
        checkpoint,
        create_classifier("resnet18_small", len(classes), width=4),
        arch="resnet18_small",
        classes=classes,
        image_size=SIZE,
        width=4,
    )
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "train:\n  epochs: 2\n  batch_size: 8\n  device: cpu\ninfluence:\n  k: 64\n"
    )
    project = f"loop-{local_files_dir.name[-20:]}"
    port = free_port()
    backend_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LABEL_STUDIO_API_KEY": label_studio.pat,  # the backend uses a personal access token
        "BASIC_AUTH_USER": AUTH[0],
        "BASIC_AUTH_PASS": AUTH[1],
        "ROBUSTAR_LS_SECRET": "loop-secret",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "robustar_ls.cli",
        "serve",
        "--config",
        str(settings),
        "--checkpoint",
        str(checkpoint),
        "--document-root",
        str(label_studio.document_root),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--label-studio-url",
        label_studio.url,
        "--data",
        str(data),
        "--project",
        project,
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    log_path = tmp_path / "backend.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while not _healthy(backend_url):
            assert process.poll() is None, f"backend exited:\n{log_tail(log_path)}"
            assert time.monotonic() < deadline, f"backend not up:\n{log_tail(log_path)}"
            time.sleep(0.5)
        for name, value in env.items():
            if name.startswith(("BASIC_AUTH", "ROBUSTAR_LS_SECRET")):
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)  # CLI: legacy
        yield SimpleNamespace(
            data=data,
            checkpoint=checkpoint,
            project=project,
            backend_url=backend_url,
            log_path=log_path,
            cache=tmp_path / "cache",
        )
    finally:
        stop_process(process, grace_seconds=10)


def _errors_in_log(log_path: Path) -> str:
    """The backend log without its access lines: what a failed job printed (its traceback)."""
    lines = log_tail(log_path, 200_000).splitlines()
    return "\n".join(line for line in lines if '" 200 ' not in line)[-4000:]


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False


def _import(label_studio, loop, capsys) -> dict:
    argv = [
        "import",
        "--data",
        str(loop.data),
        "--label-studio-url",
        label_studio.url,
        "--project",
        loop.project,
        "--backend-url",
        loop.backend_url,
        "--document-root",
        str(label_studio.document_root),
        "-q",
        "--json",
    ]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _spurious_result(mask: np.ndarray) -> list[dict]:
    rle = mask_to_rle(mask.astype(np.uint8) * 255)
    return [BrushRegion("spurious", "image", rle, "Spurious", SIZE, SIZE).to_dict()]


def _check_history_and_page(loop, capsys, versions: list[str]) -> None:
    """sync-train and Start Training both appended to the history; the page plots it."""
    assert main(["history", "--checkpoint", str(loop.checkpoint), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["version"] for e in entries] == versions
    assert [e["parent_version"] for e in entries[1:]] == versions[:-1]
    for entry in entries[1:]:  # both syncs are recorded (the second found nothing new)
        assert entry["kind"] == "paired" and entry["annotated"] == 2 and entry["sync"] is not None
    assert entries[1]["sync"]["added"] == 2 and entries[2]["sync"]["unchanged"] == 2
    page = requests.get(f"{loop.backend_url}/", auth=AUTH, timeout=10)
    assert requests.get(f"{loop.backend_url}/", timeout=10).status_code == 401
    # the served version: the checkpoint's, plus the learned segmenter's (``+seg-…``)
    assert page.status_code == 200 and f'<b id="model-version">{versions[-1]}+seg-' in page.text
    assert 'data-plot="accuracy"' in page.text and 'data-plot="loss"' in page.text
    assert page.text.count('<g class="series" data-series="test">') == 1
    assert 'id="sync-counts"' in page.text and "/projects/" in page.text


def _wait_for_influence(loop, version: str, timeout: float = 300) -> dict:
    """/health once the backend's own influence run for ``version`` and the prefetch after it
    are done; every influence state seen on the way."""
    deadline, seen, health = time.monotonic() + timeout, [], {}
    while time.monotonic() < deadline:
        health = requests.get(f"{loop.backend_url}/health", timeout=10).json()
        prefetch = health.get("prefetch") or {}
        influence = prefetch.get("influence") or {}
        seen.append(influence.get("state"))
        if (
            influence.get("model_version") == version
            and influence.get("state") in ("done", "current")
            and prefetch.get("model_version") == health["model_version"]
            and prefetch.get("state") == "done"
        ):
            return {**health, "seen": seen}
        time.sleep(0.5)
    raise AssertionError(f"no influence for {version}: {health}\n{_errors_in_log(loop.log_path)}")


def _check_the_project_catches_up(client, pid: int, loop, version: str) -> None:
    """After Start Training, with no command run: every training and test task holds fields of
    the new classifier version, and the top tasks (and the test errors) hold a prediction of
    the new served version, stored by the backend (Label Studio does not ask again)."""
    health = _wait_for_influence(loop, version)
    served = health["model_version"]
    assert served.startswith(version)
    tasks = listed_tasks(client, project=pid, fields="all")
    train = [t for t in tasks if t.data["split"] == "train"]
    test = [t for t in tasks if t.data["split"] == "test"]
    assert {t.data.get("influence_version") for t in train + test} == {version}
    assert sorted(t.data["influence_rank"] for t in train) == list(range(1, len(train) + 1))
    assert all(t.data["confidence"] is None and t.data["outcome"] is None for t in train)
    assert all(t.data["influence"] is None and t.data["outcome"] for t in test)
    top = sorted(train, key=lambda t: t.data["influence_rank"])[: min(100, len(train))]
    errors = [t for t in test if t.data["outcome"] == "wrong"]
    versions = _versions_of_predictions(client, [t.id for t in top + errors])
    missing = {task_id: found for task_id, found in versions.items() if served not in found}
    assert not missing, f"no prediction of {served}: {missing}"


@pytest.mark.postgresql
def test_the_whole_loop(label_studio, loop, capsys):
    client = label_studio.client("pat")
    summary = _import(label_studio, loop, capsys)
    pid, ml_id = summary["project_id"], summary["ml_backend_id"]
    assert summary["created_tasks"] == 18 and ml_id is not None  # 8 train, 4 val, 6 test
    # the project description links the backend's task-centre page
    assert f"{loop.backend_url}/" in (client.projects.get(pid).description or "")
    tasks = ls.tasks_by_image(client, pid)
    task_ids = [t.id for t in tasks.values()]

    # 1. Label Studio itself fetches predictions from the backend, stored with our version.
    v1 = read_version(loop.checkpoint)
    _retrieve_predictions(client, pid)
    assert _versions_of_predictions(client, task_ids) == {t: {v1} for t in task_ids}
    prediction = next(iter(client.predictions.list(task=task_ids[0])))
    kinds = {r["type"]: r for r in prediction.result}
    assert "Predicted: " in kinds["textarea"]["value"]["text"][0]
    attention = kinds["brushlabels"]
    assert attention["value"]["brushlabels"] == ["Model attention"]
    decoded = rle_to_mask(attention["value"]["rle"], SIZE, SIZE)
    assert decoded.shape == (SIZE, SIZE) and decoded.any()
    # no COCO weights on this machine: no Spurious pre-annotation, and the server says why
    assert "Mask R-CNN" in loop.log_path.read_text() or "segmenter" in loop.log_path.read_text()

    # 2. The smart tools, through label-studio-sdk's interactive call.
    for context in (
        {"x": 25.0, "y": 25.0, "width": 1, "keypointlabels": ["Pick colour"]},
        {"x": 10.0, "y": 10.0, "width": 60.0, "height": 60.0, "rectanglelabels": ["Object"]},
    ):
        tag = "colour_pick" if "keypointlabels" in context else "object_box"
        kind = "keypointlabels" if "keypointlabels" in context else "rectanglelabels"
        region = {
            "original_width": SIZE,
            "original_height": SIZE,
            "image_rotation": 0,
            "value": context,
            "id": f"r-{tag}",
            "from_name": tag,
            "to_name": "image",
            "type": kind,
            "is_positive": True,
        }
        raw = client.ml.with_raw_response.predict_interactive(
            id=ml_id, task=task_ids[0], context={"result": [region]}
        )
        answer = raw.response.json()
        assert "errors" not in answer, answer
        (brush,) = answer["data"]["result"]
        assert brush["value"]["brushlabels"] == ["Spurious"]
        assert rle_to_mask(brush["value"]["rle"], SIZE, SIZE).any()

    # 3. Annotators paint Spurious pixels on two tasks; sync-train pulls and trains on them.
    painted = sorted(tasks)[:2]
    for relpath in painted:
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        mask[:4, :4] = True
        client.annotations.create(id=tasks[relpath].id, result=_spurious_result(mask))
    argv = [
        "sync-train",
        "--data",
        str(loop.data),
        "--checkpoint",
        str(loop.checkpoint),
        "--label-studio-url",
        label_studio.url,
        "--project",
        loop.project,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "-q",
        "--json",
    ]
    assert main(argv) == 0
    trained = json.loads(capsys.readouterr().out)
    store = MaskStore(loop.data / "masks")
    assert sorted(store.relpaths()) == sorted(str(Path(p).with_suffix(".png")) for p in painted)
    assert store.read(painted[0])[:4, :4].all() and store.read(painted[0]).sum() == 16
    v2 = read_version(loop.checkpoint)
    assert trained["parent_version"] == v1 and trained["model_version"] == v2 != v1

    # 4. The sync changed masks, so the learned spurious segmenter was retrained from them; the
    # running backend serves the new classifier with it: Label Studio gets predictions of that
    # version whose "Spurious" pre-annotation comes from the learned segmenter.
    segmenter = trained["segmenter"]
    assert segmenter["retrained"] and segmenter["version"]
    served = f"{v2}+seg-{segmenter['version']}"
    _retrieve_predictions(client, pid)
    by_task = _versions_of_predictions(client, task_ids)
    assert all(served in versions for versions in by_task.values()), by_task
    learned = [p for p in client.predictions.list(task=task_ids[0]) if p.model_version == served][0]
    kinds = {r["type"]: r for r in learned.result}
    assert "Spurious: learned segmenter" in kinds["textarea"]["value"]["text"][0]
    brush = next(r for r in learned.result if r["value"].get("brushlabels") == ["Spurious"])
    assert rle_to_mask(brush["value"]["rle"], SIZE, SIZE).any() and 0 < brush["score"] <= 1

    # 5. "Start Training" (ml.train) runs sync + paired training in the backend, to completion.
    client.ml.train(id=ml_id)
    status, seen = {}, []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = requests.get(f"{loop.backend_url}/train/status", auth=AUTH, timeout=10).json()
        if status.get("state") == "running" and status.get("progress"):
            seen.append(status["progress"])
        if status.get("state") in ("succeeded", "failed"):
            break
        time.sleep(0.3)
    assert status.get("state") == "succeeded", (
        f"{status.get('error')}\n{_errors_in_log(loop.log_path)}"
    )
    v3 = read_version(loop.checkpoint)
    assert v3 != v2 and status["result"]["model_version"] == v3
    # progress, whichever worker answered: the last record is the write, all training done
    assert status["progress"]["phase"] == "write" and status["progress"]["fraction"] == 1.0
    assert all(r["phase"] in ("sync", "eval", "train", "write") for r in seen)
    versions = requests.get(f"{loop.backend_url}/versions", auth=AUTH, timeout=10).json()
    assert versions["training"]["progress"]["phase"] == "write"
    _check_history_and_page(loop, capsys, [v1, v2, v3])
    _check_the_project_catches_up(client, pid, loop, v3)

    # 6. Influence ranks the tasks; the view reads them back in that order.
    argv = [
        "influence",
        "--data",
        str(loop.data),
        "--checkpoint",
        str(loop.checkpoint),
        "--label-studio-url",
        label_studio.url,
        "--project",
        loop.project,
        "--k",
        "64",
        "-q",
        "--json",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    view = ls.ensure_influence_view(client, pid)
    ordered = listed_tasks(client, project=pid, view=view.id, fields="all")
    scores = [t.data["influence"] for t in ordered]
    assert len(scores) == 8 and scores == sorted(scores, reverse=True)
    ranks = [t.data["influence_rank"] for t in ordered]
    assert ranks[0] == 1
