"""The prefetch under a real multi-worker server: ``robustar-ls serve --workers 2`` (gunicorn)
against a real Label Studio 1.23. Every worker runs a prefetcher; one lock on the shared state
folder makes exactly one of them store each top task's prediction, once."""

from __future__ import annotations

import time
import uuid

import pytest
import torch

from robustar_ls.cli import main
from robustar_ls.config import ImportConfig, LabelStudioConfig, SyntheticConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.project_import import import_project
from tests.backend_support import untrained_checkpoint
from tests.serve_support import gunicorn_backend, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOP = 6


def test_two_workers_prefetch_each_top_task_once(
    label_studio, local_files_dir, tmp_path, monkeypatch
):
    data = local_files_dir / "ds"
    make_dataset(
        data, SyntheticConfig(size=16, per_class=5, val_per_class=0, test_per_class=2, classes=2)
    )
    torch.manual_seed(0)
    classes = ImageFolderSplits.open(data).classes
    checkpoint = tmp_path / "model.pt"
    version = untrained_checkpoint(checkpoint, classes)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    client = label_studio.client("legacy")
    extra = ["--label-studio-url", label_studio.url, "--prefetch", str(TOP)]
    extra += ["--document-root", str(label_studio.document_root)]
    with gunicorn_backend(checkpoint, tmp_path, *extra, workers=2) as (url, _):
        title = f"prefetch-gunicorn-{uuid.uuid4().hex[:8]}"
        ls_cfg = LabelStudioConfig(
            url=label_studio.url, project=title, document_root=str(label_studio.document_root)
        )
        pid = import_project(client, ls_cfg, ImportConfig(data=str(data), backend_url=url))[
            "project_id"
        ]
        argv = ["influence", "--data", str(data), "--checkpoint", str(checkpoint), "--k", "64",
                "--device", "cpu", "--label-studio-url", label_studio.url, "--project", title,
                "--prefetch", str(TOP), "-q"]  # fmt: skip
        assert main(argv) == 0
        top = {t.id for t in ls.most_influential_tasks(client, pid, TOP)}
        top |= {t.id for t in ls.test_error_tasks(client, pid, TOP)}  # they get one too

        def stored() -> list:
            return [p for p in client.predictions.list(project=pid) if p.model_version == version]

        wait_for(lambda: {p.task for p in stored()} == top, 180, "the top tasks' predictions")
        time.sleep(3)  # a second worker's duplicate would land now (the prefetch polls each 2 s)
    tasks = sorted(p.task for p in stored())
    assert tasks == sorted(top)  # each once (not once per worker): the top and the errors
