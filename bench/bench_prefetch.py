"""Prefetching N tasks' predictions into Label Studio vs N single-task ``/predict`` calls.

On the same server, the same tasks and the same model, in one run: (a) the prefetch
(``Prefetcher.step``: list the top N tasks by rank, predict them ``--chunk`` at a time, store
each chunk's predictions in one request) and (b) N ``POST /predict`` with one task each
through Flask's test client (what Label Studio sends when a task is opened). Both without the
prediction cache, so neither reuses the other's outputs. Needs a running Label Studio whose
local-files document root is ``--document-root``:

    LABEL_STUDIO_API_KEY=... OMP_NUM_THREADS=1 python bench/bench_prefetch.py \\
        --url http://localhost:8080 --document-root /srv --n 100
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import torch
from common import make_parser

from robustar_ls.backend.app import create_app
from robustar_ls.backend.images import ImageFetcher
from robustar_ls.backend.model_holder import ModelHolder
from robustar_ls.backend.predictor import Predictor, PredictorSettings
from robustar_ls.backend.prefetch import Prefetcher
from robustar_ls.config import (
    ImportConfig,
    LabelStudioConfig,
    PrefetchConfig,
    ServeConfig,
    SyntheticConfig,
)
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.project_import import import_project
from robustar_ls.models.checkpoint import save_checkpoint
from robustar_ls.models.zoo import create_classifier


def _setup(args, client, work: Path) -> tuple[int, Path, Path]:
    data = Path(args.document_root) / f"bench-prefetch-{uuid.uuid4().hex[:6]}"
    per_class = -(-args.n // 2)
    make_dataset(data, SyntheticConfig(size=args.size, per_class=per_class, val_per_class=0,
                                       test_per_class=1, classes=2))  # fmt: skip
    cfg = LabelStudioConfig(url=args.url, project=data.name, document_root=args.document_root)
    pid = import_project(client, cfg, ImportConfig(data=str(data)))["project_id"]
    train = ls.tasks_by_image(client, pid)
    ranks = {task.id: {"influence_rank": k + 1} for k, task in enumerate(train.values())}
    ls.update_task_data(client, pid, ranks, current={t.id: t.data for t in train.values()})
    torch.manual_seed(0)
    classes = ImageFolderSplits.open(data).classes
    model = create_classifier("resnet18_small", len(classes), width=args.width)
    checkpoint = work / "model.pt"
    save_checkpoint(checkpoint, model, arch="resnet18_small", classes=classes,
                    image_size=args.size, width=args.width)  # fmt: skip
    return pid, data, checkpoint


def _predictor(args, checkpoint: Path) -> tuple[Predictor, ServeConfig]:
    cfg = ServeConfig(checkpoint=str(checkpoint), document_root=args.document_root,
                      label_studio_url=args.url, cache_dir=str(checkpoint.parent / "cache"),
                      device="cpu", prediction_cache_size=0)  # fmt: skip
    predictor = Predictor(ModelHolder(checkpoint, device="cpu"), ImageFetcher.from_config(cfg),
                          None, PredictorSettings(batch_size=args.chunk, cache_size=0))  # fmt: skip
    return predictor, cfg


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--document-root", required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="image side, px")
    parser.add_argument("--width", type=int, default=16, help="classifier width")
    args = parser.parse_args()
    client = ls.connect(args.url, os.environ["LABEL_STUDIO_API_KEY"])
    with tempfile.TemporaryDirectory() as tmp:
        pid, data, checkpoint = _setup(args, client, Path(tmp))
        predictor, cfg = _predictor(args, checkpoint)
        label_config = ls.project_label_config(client, pid, ls.RetryPolicy())
        top = ls.most_influential_tasks(client, pid, args.n)
        app = create_app(cfg, predictor=predictor).test_client()
        body = {"label_config": label_config, "project": f"{pid}.0"}
        app.post("/predict", json={**body, "tasks": [{"id": 0, "data": top[-1].data}]})  # warm
        t0 = time.perf_counter()
        for task in top:
            answer = app.post(
                "/predict", json={**body, "tasks": [{"id": task.id, "data": task.data}]}
            )
            assert answer.get_json()["results"][0]["result"], answer.get_json()
        single = time.perf_counter() - t0
        settings = PrefetchConfig(top=args.n, chunk=args.chunk)
        prefetcher = Prefetcher(predictor, settings, Path(tmp) / "pf", lambda: client,
                                lambda c: pid)  # fmt: skip
        t0 = time.perf_counter()
        prefetcher.step()
        prefetch = time.perf_counter() - t0
        status = prefetcher.status()
        held = ls.tasks_with_versions(client, pid, [t.id for t in top])
        stored = sum(predictor.model_version in t.versions for t in held.values())
        client.projects.delete(pid)
    result = {
        "n": len(top), "chunk": args.chunk, "stored": stored, "state": status["state"],
        "single_predict_s": round(single, 2), "prefetch_s": round(prefetch, 2),
        "prefetch_over_single": round(prefetch / single, 3),
    }  # fmt: skip
    print(f"{len(top)} tasks: {len(top)} single-task /predict {single:.1f} s; prefetch "
          f"{prefetch:.1f} s (stored {stored}) = {prefetch / single:.3f}x")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
