"""`robustar-ls sync-train --label-studio-url … --project …` against a real Label Studio."""

from __future__ import annotations

import json
import shutil
import uuid

import numpy as np
import pytest

from robustar_ls.cli import main
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore
from robustar_ls.labelstudio.brush import mask_to_rle
from robustar_ls.labelstudio.config import default_label_config
from robustar_ls.models.checkpoint import read_version, save_checkpoint
from robustar_ls.models.zoo import create_classifier

pytestmark = pytest.mark.e2e


def spurious(mask: np.ndarray) -> dict:
    return {
        "from_name": "spurious",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": mask.shape[1],
        "original_height": mask.shape[0],
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Spurious"]},
    }


def test_sync_train_pulls_masks_and_bumps_the_model_version(
    label_studio, tiny_dataset, tmp_path, capsys, monkeypatch
):
    data_root = tmp_path / "data"
    shutil.copytree(tiny_dataset, data_root)
    data = ImageFolderSplits.open(data_root)
    checkpoint = tmp_path / "model.pt"
    model = create_classifier("resnet18_small", len(data.classes), width=4)
    v0 = save_checkpoint(
        checkpoint, model, arch="resnet18_small", classes=data.classes, image_size=16, width=4
    )

    client = label_studio.client("legacy")
    title = f"sync-train-e2e-{uuid.uuid4().hex[:8]}"
    project = client.projects.create(title=title, label_config=default_label_config())
    samples = data.splits["train"]
    client.projects.import_tasks(
        id=project.id,
        request=[
            {"image": f"/data/local-files/?d=x/{s.relpath}", "relpath": s.relpath, "saliency": ""}
            for s in samples
        ],
    )
    task_of = {t.data["relpath"]: t.id for t in client.tasks.list(project=project.id)}
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :5] = 255
    annotated = [samples[0].relpath, samples[-1].relpath]
    for rel in annotated:
        client.annotations.create(id=task_of[rel], result=[spurious(mask)])

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    common = [
        "sync-train",
        "--data",
        str(data_root),
        "--checkpoint",
        str(checkpoint),
        "--label-studio-url",
        label_studio.url,
        "--project",
        title,
        "--json",
        "-q",
    ]
    assert main([*common, "--dry-run"]) == 0
    preview = json.loads(capsys.readouterr().out)
    assert preview["trained"] is False and sorted(preview["sync"]["added"]) == sorted(annotated)
    assert read_version(checkpoint) == v0 and not (data_root / "masks").exists()

    assert main([*common, "--epochs", "1", "--batch-size", "16", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parent_version"] == v0 and summary["model_version"] != v0
    assert read_version(checkpoint) == summary["model_version"]
    assert sorted(summary["sync"]["added"]) == sorted(annotated)
    assert set(summary["before"]) == set(summary["after"]) >= {"train", "test"}
    store = MaskStore(data_root / "masks")
    for rel in annotated:
        np.testing.assert_array_equal(store.read(rel), mask > 0)


def test_sync_train_unknown_project_is_a_user_error(
    label_studio, tiny_dataset, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    argv = [
        "sync-train",
        "--data",
        str(tiny_dataset),
        "--checkpoint",
        str(tmp_path / "none.pt"),
        "--label-studio-url",
        label_studio.url,
        "--project",
        f"no-such-project-{uuid.uuid4().hex[:6]}",
        "--dry-run",
    ]
    assert main(argv) == 2
    assert "no-such-project" in capsys.readouterr().err
