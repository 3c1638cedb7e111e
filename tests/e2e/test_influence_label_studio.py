"""`robustar-ls influence --label-studio-url … --project …` against a real Label Studio 1.23."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

from robustar_ls.cli import main
from robustar_ls.config import ImportConfig, LabelStudioConfig, SyntheticConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.project_import import import_project
from robustar_ls.models.checkpoint import save_checkpoint
from robustar_ls.models.zoo import create_classifier

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
        parent_version=parent,
    )


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
        else:
            assert (task.data["influence"], task.data["influence_rank"]) == (0.0, 0)
            assert task.data["influence_explains"] == ""


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
