"""`robustar-ls sync-train --label-studio-url … --project …` against a real Label Studio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from robustar_ls.cli import main
from robustar_ls.data.masks import MaskStore
from robustar_ls.labelstudio.brush import mask_to_rle
from robustar_ls.labelstudio.config import default_label_config
from robustar_ls.labelstudio.results import BrushRegion
from robustar_ls.models.checkpoint import read_version
from tests.backend_support import dataset_copy_with_checkpoint

from .listing import listed_tasks

pytestmark = pytest.mark.e2e


def spurious(mask: np.ndarray) -> dict:
    height, width = mask.shape
    return BrushRegion("spurious", "image", mask_to_rle(mask), "Spurious", width, height).to_dict()


@pytest.fixture
def annotated(label_studio, tiny_dataset, tmp_path) -> SimpleNamespace:
    """A copy of the tiny dataset, an untrained checkpoint, a project with two annotations."""
    data_root, data, checkpoint, v0 = dataset_copy_with_checkpoint(tiny_dataset, tmp_path)

    client = label_studio.client("legacy")
    title = f"sync-train-e2e-{uuid.uuid4().hex[:8]}"
    project = client.projects.create(title=title, label_config=default_label_config())
    samples = data.splits["train"]
    client.projects.import_tasks(
        id=project.id,
        request=[
            {
                "image": f"/data/local-files/?d=x/{s.relpath}",
                "relpath": s.relpath,
                "saliency": "",
                "related_html": "",
            }
            for s in samples
        ],
    )
    task_of = {t.data["relpath"]: t.id for t in listed_tasks(client, project=project.id)}
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :5] = 255
    annotated = [samples[0].relpath, samples[-1].relpath]
    for rel in annotated:
        client.annotations.create(id=task_of[rel], result=[spurious(mask)])
    argv = [
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
    return SimpleNamespace(
        data_root=data_root, checkpoint=checkpoint, v0=v0, mask=mask, relpaths=annotated, argv=argv
    )


def test_sync_train_pulls_masks_and_bumps_the_model_version(
    label_studio, annotated, capsys, monkeypatch
):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    assert main([*annotated.argv, "--dry-run"]) == 0
    preview = json.loads(capsys.readouterr().out)
    assert preview["trained"] is False
    assert sorted(preview["sync"]["added"]) == sorted(annotated.relpaths)
    assert read_version(annotated.checkpoint) == annotated.v0
    assert not (annotated.data_root / "masks").exists()

    train = ["--epochs", "1", "--batch-size", "16", "--device", "cpu"]
    assert main([*annotated.argv, *train]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parent_version"] == annotated.v0 != summary["model_version"]
    assert read_version(annotated.checkpoint) == summary["model_version"]
    assert sorted(summary["sync"]["added"]) == sorted(annotated.relpaths)
    assert set(summary["before"]) == set(summary["after"]) >= {"train", "test"}
    store = MaskStore(annotated.data_root / "masks")
    for rel in annotated.relpaths:
        np.testing.assert_array_equal(store.read(rel), annotated.mask > 0)


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


@pytest.mark.slow
def test_sync_train_under_torchrun_syncs_once_on_rank_0(label_studio, annotated):
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "OMP_NUM_THREADS": "1",
        "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "robustar_ls.cli", *annotated.argv, "--epochs", "1", "--batch-size", "4"]
    proc = subprocess.run(
        [*cmd, "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # one JSON document: rank 0's
    # rank 0 did the sync and reports it (with every rank syncing, another could have won)
    assert sorted(summary["sync"]["added"]) == sorted(annotated.relpaths)
    assert summary["parent_version"] == annotated.v0
    assert read_version(annotated.checkpoint) == summary["model_version"] != annotated.v0
