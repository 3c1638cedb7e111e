"""What influence costs, as ratios measured in one run with their spread over repeats.

- **featurizing** (train side, sketch and dense Gaussian projections) over one plain
  forward+backward pass of the whole model (cross-entropy, gradients of every parameter) on the
  same pre-decoded images and batches. The three are timed in rounds, the order rotated each
  round; each round gives one ratio per projection; the median and the range over rounds are
  reported.
- **Gram accumulation** (``Phi^T Phi`` while the cache is written) per image over sketch
  featurizing per image.
- **query**: ``--query-test`` test x ``--query-train`` train random float16 features in a
  memory-mapped ``.npy`` (k = ``--k``), streamed by ``kernel_scores``; timed ``--query-repeats``
  times (the first reads the file from disk or the page cache, as a real query would), each
  followed by featurizing the ``--images`` images again (sketch, target margin: the test side
  costs one gradient and one projection per image, like the train side), so each repeat's ratio
  (query time / time to featurize the ``--query-test`` test images) is measured at one load.

Threads: ``--threads`` torch threads (default 1). Model: resnet18_small (width 16, 32 px, 4
classes, untrained: a gradient costs the same whatever the weights), gradients of layer4.1 +
fc (295,940 parameters), batches of 64.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_influence_cost.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from robustar_ls.config import InfluenceConfig
from robustar_ls.explain.feature_cache import TrainFeatures, gram_of
from robustar_ls.explain.influence import InfluenceScorer, kernel_scores
from robustar_ls.models.zoo import create_classifier

GRAM_ROWS = 4096


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=256, help="images per featurizing round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--query-train", type=int, default=100_000)
    p.add_argument("--query-test", type=int, default=1_000)
    p.add_argument("--query-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--projections", nargs="+", choices=["sketch", "gaussian"], default=["sketch", "gaussian"]
    )
    return p


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def time_plain(model, batches) -> float:
    start = time.perf_counter()
    for images, labels in batches:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_featurize(scorer, batches) -> float:
    start = time.perf_counter()
    for _ in scorer.feature_batches(batches, "margin"):
        pass
    return time.perf_counter() - start


def scorer_for(model, k: int, projection: str) -> InfluenceScorer:
    return InfluenceScorer(model, None, InfluenceConfig(k=k, projection=projection), device="cpu")


def measure_cost(
    model, batches, k: int, rounds: int = 5, projections: tuple[str, ...] = ("sketch", "gaussian")
) -> dict:
    """Plain fwd+bwd and featurizing with each projection, in ``rounds`` rotated rounds."""
    scorers = {proj: scorer_for(model, k, proj) for proj in dict.fromkeys(("sketch", *projections))}
    time_plain(model, batches[:1])  # warm-up (and the Gaussian blocks' first generation)
    for scorer in scorers.values():
        time_featurize(scorer, batches[:1])
    jobs = {"plain": lambda: time_plain(model, batches)}
    jobs.update({p: (lambda s=s: time_featurize(s, batches)) for p, s in scorers.items()})
    names = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(jobs[name]())
    images = sum(len(b[1]) for b in batches)
    report = {"images": images, "parameters": int(sum(scorers["sketch"].dims))}
    report.update({"rounds": rounds, "seconds": times})
    for proj in scorers:
        ratios = [f / p for f, p in zip(times[proj], times["plain"], strict=True)]
        report[f"{proj}_ratio"] = statistics.median(ratios)
        report[f"{proj}_ratio_spread"] = spread(ratios)
    report["sketch_s_per_image"] = statistics.median(times["sketch"]) / images
    return report


def _features_file(path: Path, n: int, k: int, rng) -> None:
    memmap = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, k))
    for lo in range(0, n, 8192):
        rows = min(8192, n - lo)
        memmap[lo : lo + rows] = rng.standard_normal((rows, k), dtype=np.float32)
    memmap.flush()


def measure_query(
    n: int, t: int, k: int, per_image_featurize: float | Callable[[], float], repeats: int = 3
) -> dict:
    """``t`` test x ``n`` train: random float16 features in a memmap, streamed by the query.

    The cache's Gram matrix is accumulated while featurizing (one-off per model version); here
    it is timed on the first ``GRAM_ROWS`` rows only and the query uses ``n I`` (the expected
    Gram of N(0, 1) features): the query's cost does not depend on its values.
    ``per_image_featurize``: seconds to featurize one image, or a function timing it, then
    called after each query so that each ratio comes from one moment of the machine's load.
    """
    timer = per_image_featurize if callable(per_image_featurize) else None
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-influence-") as tmp:
        path = Path(tmp) / "train_features.npy"
        _features_file(path, n, k, rng)
        features = np.load(path, mmap_mode="r")
        rows = min(GRAM_ROWS, n)
        start = time.perf_counter()
        gram_of(np.asarray(features[:rows], dtype=np.float32))
        gram_s_per_image = (time.perf_counter() - start) / rows
        train = TrainFeatures(
            features=features,
            row_scales=np.ones(n, dtype=np.float32),
            gram=np.eye(k) * n,
            feature_sum=np.zeros(k),
            meta={"synthetic": True},
        )
        test = rng.standard_normal((t, k), dtype=np.float32)
        seconds, per_image = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            result = kernel_scores(train, test, InfluenceConfig(aggregate="sum"))
            seconds.append(time.perf_counter() - start)
            per_image.append(timer() if timer else float(per_image_featurize))
        assert result.scores.shape == (n,)
        del features, train
    ratios = [s / (p * t) for s, p in zip(seconds, per_image, strict=True)]
    return {
        "train": n,
        "test": t,
        "k": k,
        "query_seconds": seconds,
        "featurize_s_per_image": per_image,
        "query_s": statistics.median(seconds),
        "query_ms_per_test_image": 1000 * statistics.median(seconds) / t,
        "query_over_featurizing_the_test_images": statistics.median(ratios),
        "query_over_featurizing_spread": spread(ratios),
        "gram_s_per_train_image": gram_s_per_image,
        "gram_over_featurizing": gram_s_per_image / statistics.median(per_image),
    }


def batches_of(images: int, classes: int = 4, batch: int = 64, seed: int = 0) -> list:
    """Pre-decoded stand-in images (uniform noise in [0, 1]) with labels, in batches."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(images, 3, 32, 32, generator=generator)
    y = torch.randint(classes, (images,), generator=generator)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, images, batch)]


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = create_classifier("resnet18_small", 4, width=args.width).eval()
    batches = batches_of(args.images, seed=args.seed)
    cost = measure_cost(model, batches, args.k, args.rounds, tuple(args.projections))
    query = {}
    if args.query_train:
        sketch = scorer_for(model, args.k, "sketch")
        query = measure_query(
            args.query_train,
            args.query_test,
            args.k,
            lambda: time_featurize(sketch, batches) / cost["images"],
            args.query_repeats,
        )
    report = {"bench": "influence_cost", "threads": torch.get_num_threads(), "cost": cost}
    report["query"] = query
    loadavg = Path("/proc/loadavg")
    report["loadavg_after"] = loadavg.read_text().split()[:3] if loadavg.exists() else None
    print_table(report)
    return report


def print_table(report: dict) -> None:
    c, q = report["cost"], report["query"]
    ratios = ", ".join(
        f"{proj} {r['median']:.2f}x ({r['min']:.2f}..{r['max']:.2f})"
        for proj in ("sketch", "gaussian")
        if (r := c.get(f"{proj}_ratio_spread"))
    )
    print(
        f"featurizing / plain fwd+bwd ({c['images']} images, {c['parameters']} parameters, "
        f"{report['threads']} thread(s), {c['rounds']} rounds): {ratios}",
        file=sys.stderr,
    )
    if q:
        qs = q["query_over_featurizing_spread"]
        print(
            f"query {q['test']} test x {q['train']} train (k={q['k']}): "
            f"{q['query_ms_per_test_image']:.1f} ms per test image, {qs['median']:.2f}x "
            f"({qs['min']:.2f}..{qs['max']:.2f}) the time to featurize them; Gram accumulation "
            f"{q['gram_over_featurizing']:.3f}x featurizing per image",
            file=sys.stderr,
        )


if __name__ == "__main__":
    print(json.dumps(main(get_args_parser().parse_args()), default=float))
