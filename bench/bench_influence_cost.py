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
import sys
from pathlib import Path

import torch
from common import make_parser, measure_cost, measure_query, scorer_for, time_featurize

from robustar_ls.models.zoo import create_classifier


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
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
