"""`robustar-ls influence --label-studio-url … --project …` against a real Label Studio 1.23."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import torch

from robustar_ls.cli import main
from robustar_ls.config import ImportConfig, LabelStudioConfig, SyntheticConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.project_import import import_project
from robustar_ls.models.checkpoint import Provenance, save_checkpoint
from robustar_ls.models.zoo import create_classifier

from .listing import listed_tasks

pytestmark = pytest.mark.e2e


def _checkpoint(path: Path, classes: list[str], seed: int, parent: str | None = None) -> str:
    torch.manual_seed(seed)
    model = create_classifier("resnet18_small", len(classes), width=4)
    return save_checkpoint(
        path,
        model,
        arch="resnet18_small",
        classes=classes,
        image_size=16,
        width=4,
        provenance=Provenance(parent_version=parent),
    )


@pytest.mark.postgresql
def test_scores_are_written_into_tasks_and_a_rerun_replaces_them(
    label_studio, local_files_dir, tmp_path, monkeypatch, capsys
):
    from robustar_ls.data.synthetic import make_dataset

    data = local_files_dir / "ds"
    make_dataset(
        data, SyntheticConfig(size=16, per_class=4, val_per_class=0, test_per_class=3, classes=3)
    )
    splits = ImageFolderSplits.open(data)
    relpaths = {s.relpath for s in splits.splits["train"]}
    client = label_studio.client("legacy")
    title = f"influence-{uuid.uuid4().hex[:8]}"
    ls_cfg = LabelStudioConfig(
        url=label_studio.url, project=title, document_root=str(label_studio.document_root)
    )
    pid = import_project(client, ls_cfg, ImportConfig(data=str(data)))["project_id"]

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    ckpt = tmp_path / "model.pt"
    first_version = _checkpoint(ckpt, splits.classes, seed=0)
    argv = ["influence", "--data", str(data), "--checkpoint", str(ckpt), "--k", "64"]
    argv += ["--device", "cpu", "--label-studio-url", label_studio.url, "--project", title]
    argv += ["--json", "-q"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_version"] == first_version
    assert printed["label_studio"]["scored"] == len(relpaths)
    tasks = ls.tasks_by_image(client, pid)
    assert set(tasks) == relpaths
    ranks = sorted(t.data["influence_rank"] for t in tasks.values())
    assert ranks == list(range(1, len(relpaths) + 1))
    for relpath, task in tasks.items():
        assert task.data["influence"] == pytest.approx(printed["scores"][relpath], abs=1e-5)
        assert task.data["influence_explains"].startswith("drives ")
        assert task.data["true_class"] == relpath.split("/")[0]  # other fields kept
    first_errors = _check_test_tasks(client, pid, printed)
    driving = [t for t in tasks.values() if "task=" in t.data["related_html"]]
    assert driving, "some training task links to the test errors it drives"
    for task in driving:
        for linked in re.findall(r"task=(\d+)", task.data["related_html"]):
            assert int(linked) in first_errors  # a link opens a misclassified test task
    views = {v.data.get("title"): v for v in client.views.list(project=pid)}
    shown = listed_tasks(
        client, project=pid, view=views[ls.TEST_ERRORS_VIEW_TITLE].id, fields="all"
    )
    confidences = [t.data["confidence"] for t in shown]
    assert len(confidences) == len(first_errors)
    assert confidences == sorted(confidences, reverse=True)  # most confident errors first

    # after "retraining" (a new model version), --top 2 rewrites two tasks and resets the rest
    second_version = _checkpoint(ckpt, splits.classes, seed=1, parent=first_version)
    assert second_version != first_version
    assert main([*argv, "--top", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_version"] == second_version
    assert printed["label_studio"]["scored"] == 2
    assert printed["label_studio"]["cleared"] == len(relpaths) - 2
    tasks = ls.tasks_by_image(client, pid)
    top = {item["relpath"] for item in printed["top"]}
    for relpath, task in tasks.items():
        if relpath in top:
            assert task.data["influence"] == pytest.approx(printed["scores"][relpath], abs=1e-5)
            assert task.data["influence_rank"] in (1, 2)
            assert task.data["influence_version"] == second_version
        else:
            assert (task.data["influence"], task.data["influence_rank"]) == (None, None)
            assert task.data["influence_version"] is None
            assert task.data["influence_explains"] == ""
            assert task.data["related_html"] == ""
    _check_test_tasks(client, pid, printed)  # the new model's predictions replaced the old


def _check_test_tasks(client, pid: int, printed: dict) -> set[int]:
    """Every test task carries the prediction; each error its top training tasks (ids of
    training tasks of this project, most influential first). Returns the error task ids."""
    by_split = ls.tasks_by_split(client, pid)
    train_ids = {t.id: rel for rel, t in by_split["train"].items()}
    errors = {e["test"]: e for e in printed["test_errors"]}
    assert errors, "the random model should make test errors"
    assert set(by_split["test"]) == set(printed["predictions"])
    error_ids = set()
    for relpath, task in by_split["test"].items():
        data, pred = task.data, printed["predictions"][relpath]
        assert (data["predicted"], data["confidence"]) == (pred["predicted"], pred["confidence"])
        if relpath not in errors:
            assert data["outcome"] == "correct" and data["top_training_tasks"] is None
            continue
        error_ids.add(task.id)
        assert data["outcome"] == "wrong"
        top = data["top_training_tasks"]
        assert top and set(top) <= set(train_ids)  # training tasks of the same project
        assert [train_ids[i] for i in top] == errors[relpath]["top_train"][: len(top)]
        for task_id in top:
            assert f"task={task_id}" in data["related_html"]
    return error_ids


def test_unknown_project_is_explained(label_studio, local_files_dir, tmp_path, monkeypatch, capsys):
    from robustar_ls.data.synthetic import make_dataset

    data = local_files_dir / "ds"
    make_dataset(
        data, SyntheticConfig(size=16, per_class=2, val_per_class=0, test_per_class=1, classes=2)
    )
    ckpt = tmp_path / "model.pt"
    _checkpoint(ckpt, ImageFolderSplits.open(data).classes, seed=0)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    title = f"missing-{uuid.uuid4().hex[:8]}"
    code = main(
        ["influence", "--data", str(data), "--checkpoint", str(ckpt), "--k", "16", "-q",
         "--device", "cpu", "--label-studio-url", label_studio.url, "--project", title]
    )  # fmt: skip
    assert code == 2
    assert f"no Label Studio project titled {title!r}" in capsys.readouterr().err
    assert ls.find_project(label_studio.client("legacy"), title) is None  # nothing created
