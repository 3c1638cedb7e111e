"""Sharded influence featurization: N processes under torchrun against one plain process.

Each run featurizes the same training images into a fresh cache folder, in fresh processes
with the same torch thread count per process (``--threads``, default 1):

- one process: the plain single-process path (``InfluenceScorer.train_features``), what
  ``robustar-ls influence`` does without torchrun;
- ``--procs`` processes: ``torchrun --standalone --nproc-per-node N`` (Gloo), each featurizing
  its shards, the Gram matrix all-reduced, rank 0 merging the shards into the cache.

Timed on rank 0 from a barrier after start-up (model loaded, process group up) until the
cache is published; start-up (importing torch) is not in either time. The runs are
interleaved (1, N, N, 1, 1, N, ...) ``--repeats`` times; each repeat's throughput ratio is
one-process time / N-process time. /proc/loadavg is recorded before every run: on a shared
machine the ratio depends on how many cores the other jobs leave. The caches of the first
pair are compared (features equal, Gram matrix allclose).

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_influence_shard.py --work /tmp/shard-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, make_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--work", required=True, help="folder for the dataset, model and caches")
    p.add_argument("--per-class", type=int, default=300, help="training images per class (x4)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    return p


def prepare(args) -> tuple[Path, Path]:
    """A ``background`` dataset and an untrained resnet18_small checkpoint (the cost of a
    gradient does not depend on the weights)."""
    import torch

    from robustar_ls.config import SyntheticConfig
    from robustar_ls.data.folders import ImageFolderSplits
    from robustar_ls.data.synthetic import make_dataset
    from robustar_ls.models.checkpoint import save_checkpoint
    from robustar_ls.models.zoo import create_classifier

    work = Path(args.work)
    data, ckpt = work / "data", work / "model.pt"
    if not (data / "dataset.json").is_file():
        cfg = SyntheticConfig(
            kind="background", per_class=args.per_class, test_per_class=2, val_per_class=0
        )
        make_dataset(data, cfg)
    if not ckpt.is_file():
        classes = ImageFolderSplits.open(data, required=("train",)).classes
        torch.manual_seed(0)
        model = create_classifier("resnet18_small", len(classes), width=args.width)
        save_checkpoint(
            ckpt, model, arch="resnet18_small", classes=classes, image_size=32, width=args.width
        )
    return data, ckpt


def worker(args) -> None:
    """One run (every rank of it): featurize into ``--cache``; rank 0 writes its timing."""
    import torch
    import torch.distributed as dist

    from robustar_ls.config import InfluenceConfig
    from robustar_ls.data.folders import ImageFolderSplits
    from robustar_ls.explain.influence import InfluenceScorer
    from robustar_ls.models.checkpoint import load_checkpoint
    from robustar_ls.train.torchrun import process_group

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    with process_group("cpu") as ranks:
        ckpt = load_checkpoint(work / "model.pt")
        train = ImageFolderSplits.open(work / "data", required=("train",)).splits["train"]
        scorer = InfluenceScorer(ckpt.model, None, InfluenceConfig(k=args.k, device="cpu"))
        if ranks is not None:
            dist.barrier()
        start = time.perf_counter()
        features = scorer.train_features(
            train, ckpt.image_size, ckpt.version, args.cache, ranks=ranks
        )
        seconds = time.perf_counter() - start
    if features is not None:
        timing = {"seconds": seconds, "images": len(train), "threads": torch.get_num_threads()}
        (Path(args.cache) / "timing.json").write_text(json.dumps(timing))


def run(args, procs: int, cache: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    script = [str(Path(__file__).resolve()), "--worker", "--work", args.work]
    script += ["--cache", str(cache), "--k", str(args.k), "--threads", str(args.threads)]
    if procs == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc-per-node", str(procs), *script]
    load = Path("/proc/loadavg").read_text().split()[:3]
    subprocess.run(command, env=env, check=True, capture_output=True)
    timing = json.loads((cache / "timing.json").read_text())
    return {"procs": procs, "loadavg_before": " ".join(load), **timing}


def compare(one: Path, many: Path) -> dict:
    import numpy as np

    [a], [b] = [list(p.glob("*/train_features.npy")) for p in (one, many)]
    gram_a, gram_b = (np.load(p.parent / "gram.npy") for p in (a, b))
    return {
        "features_equal": bool(np.array_equal(np.load(a), np.load(b))),
        "gram_max_rel_diff": float(np.abs(gram_a - gram_b).max() / np.abs(gram_a).max()),
    }


def main(args) -> dict:
    prepare(args)
    caches = Path(args.work) / "caches"
    shutil.rmtree(caches, ignore_errors=True)  # every run starts cold
    runs, pairs = [], []
    for repeat in range(args.repeats):
        order = (1, args.procs) if repeat % 2 == 0 else (args.procs, 1)
        pair = {}
        for procs in order:
            cache = caches / f"r{repeat}-p{procs}"
            result = run(args, procs, cache)
            runs.append({"repeat": repeat, **result})
            pair[procs] = result["seconds"]
            print(json.dumps(runs[-1]), file=sys.stderr)
        pairs.append(pair[1] / pair[args.procs])
    ratios = sorted(pairs)
    report = {
        "bench": "influence_shard",
        "procs": args.procs,
        "threads_per_process": args.threads,
        "images": runs[0]["images"],
        "k": args.k,
        "runs": runs,
        "throughput_ratios": pairs,
        "ratio_median": statistics.median(pairs),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "identical": compare(caches / "r0-p1", caches / f"r0-p{args.procs}"),
        "cpu_count": os.cpu_count(),
    }
    print(
        f"{args.procs} processes vs 1, {args.threads} thread(s) each, {report['images']} images: "
        f"throughput x{report['ratio_median']:.2f} (median of {len(pairs)}; "
        f"{ratios[0]:.2f}..{ratios[-1]:.2f})",
        file=sys.stderr,
    )
    return report


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    if parsed.worker:
        worker(parsed)
    else:
        print(json.dumps(main(parsed)))
