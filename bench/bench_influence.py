"""Influence benchmark: does our score put the shortcut-carrying training images first?

Steps (one process, one seed):

1. ``make-dataset --kind patch --spurious-fraction 0.3`` and train resnet18_small (width 16).
   Shortcut check: accuracy on test (out-of-domain: random patch colours) against val, and the
   share of test errors that predict the patch's colour class.
2. Score the training images against the misclassified test images with several variants and
   baselines; precision@50/@100 = share of ``spurious.json == "aligned"`` images among the top
   50/100, next to the base rate (random order).
3. Cost: featurizing (sketch and Gaussian projections) as a ratio over one plain
   forward+backward pass on the same (pre-decoded) images, in rotated rounds, and the query
   (1,000 test x 100,000 train synthetic features in a float16 memmap), with
   ``bench_influence_cost.py``'s functions (that script measures them on their own, with
   their spread).

Prints a table on stderr and a JSON document on stdout. Example (see bench/README.md)::

    OMP_NUM_THREADS=2 PYTHONPATH=. python bench/bench_influence.py --per-class 300
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import make_parser, measure_cost, measure_query, plain_table

from robustar_ls.config import InfluenceConfig, ModelConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.synthetic import SHAPES, image_specs, make_dataset
from robustar_ls.data.tensors import ImageDataset
from robustar_ls.explain.feature_cache import TrainFeatures
from robustar_ls.explain.influence import (
    InfluenceScorer,
    MisclassifiedTest,
    ScoreRequest,
    kernel_scores,
)
from robustar_ls.models.checkpoint import load_checkpoint
from robustar_ls.train.run import train_classifier

log = logging.getLogger("bench_influence")


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--work", default=None, help="folder for dataset and model (default: temp)")
    p.add_argument("--kind", choices=["patch", "background"], default="background")
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=150)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--spurious-fraction", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--dampings", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0, 1000.0])
    p.add_argument("--cost-batches", type=int, default=4, help="batches timed for cost ratios")
    p.add_argument("--query-train", type=int, default=100_000)
    p.add_argument("--query-test", type=int, default=1_000)
    p.add_argument("--checkpoint", default=None, help="reuse a trained model (skips training)")
    p.add_argument("--data", default=None, help="reuse a dataset (with --checkpoint)")
    return p


# -- setup ----------------------------------------------------------------------------------


def prepare(args, work: Path) -> tuple[Path, Path, dict]:
    if args.checkpoint:
        return Path(args.data), Path(args.checkpoint), {}
    data = work / "data"
    cfg = SyntheticConfig(
        kind=args.kind,
        per_class=args.per_class,
        test_per_class=args.test_per_class,
        val_per_class=100,
        classes=args.classes,
        spurious_fraction=args.spurious_fraction,
        seed=args.seed,
    )
    make_dataset(data, cfg)
    ckpt = work / "model.pt"
    start = time.perf_counter()
    summary = train_classifier(
        data,
        ckpt,
        ModelConfig(width=args.width),
        TrainConfig(epochs=args.epochs, seed=args.seed, device="cpu"),
    )
    summary["train_seconds"] = time.perf_counter() - start
    return data, ckpt, summary


def spurious_classes(data: Path, classes: list[str]) -> dict[str, int]:
    """The class (model index) whose colour each test image's spurious feature shows."""
    cfg = SyntheticConfig(**json.loads((data / "dataset.json").read_text())["config"])
    return {
        rel: classes.index(SHAPES[spec.feature])  # model classes are sorted, SHAPES are not
        for rel, spec, _ in image_specs("test", cfg.test_per_class, cfg)
    }


def preload(dataset: ImageDataset, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images = torch.stack([dataset.load(i) for i in range(len(dataset))])
    labels = torch.tensor([s.label for s in dataset.samples])
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, len(images), batch)]


# -- baselines ------------------------------------------------------------------------------


def last_layer_loss_grads(model, batches) -> np.ndarray:
    """Exact per-sample cross-entropy gradients of the fc layer: (p - e_y) ⊗ [h, 1]."""
    feats = []
    hook = model.fc.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    rows = []
    with torch.no_grad():
        for images, labels in batches:
            probs = model(images).softmax(1)
            h = torch.cat([feats.pop(), torch.ones(len(images), 1)], 1)
            delta = probs - torch.nn.functional.one_hot(labels, probs.shape[1]).float()
            rows.append((delta[:, :, None] * h[:, None, :]).flatten(1))
    hook.remove()
    return torch.cat(rows).numpy()


def train_losses(model, batches) -> np.ndarray:
    with torch.no_grad():
        return torch.cat(
            [torch.nn.functional.cross_entropy(model(x), y, reduction="none") for x, y in batches]
        ).numpy()


def ranking(scores: np.ndarray) -> np.ndarray:
    return np.lexsort((np.arange(len(scores)), -scores))  # highest first, ties by index


def precision(scores: np.ndarray, aligned: np.ndarray, k: int) -> float:
    return float(aligned[ranking(scores)[:k]].mean())


def average_precision(scores: np.ndarray, aligned: np.ndarray) -> float:
    """Mean of precision@rank over the ranks of the aligned images (1 = all first)."""
    hits = aligned[ranking(scores)]
    ranks = np.flatnonzero(hits) + 1
    return float((np.arange(1, len(ranks) + 1) / ranks).mean()) if len(ranks) else 0.0


# -- main -----------------------------------------------------------------------------------


def variants(model, data, ckpt_version, args) -> tuple[list[dict], dict]:
    splits = ImageFolderSplits.open(data, required=("train", "test"))
    train, test = splits.splits["train"], splits.splits["test"]
    status = json.loads((data / "spurious.json").read_text())
    aligned = np.array([status[s.relpath] == "aligned" for s in train], dtype=np.float64)
    cfg = InfluenceConfig(k=args.k)
    scorer = InfluenceScorer(model, None, cfg, device="cpu")
    size = load_checkpoint(args._ckpt).image_size
    errors: list[MisclassifiedTest] = scorer.test_errors(test, size)
    colours = spurious_classes(data, splits.classes)
    follow = sum(colours[e.relpath] == e.predicted for e in errors)
    info = {
        "errors": len(errors),
        "errors_predicting_spurious_colour": follow,
        "aligned_base_rate": float(aligned.mean()),
        "aligned": int(aligned.sum()),
    }
    log.info("%d test errors, %d predict the spurious colour's class", len(errors), follow)
    train_batches = preload(ImageDataset(train, size), cfg.batch_size)
    by_rel = {s.relpath: s for s in test}
    err_batches = preload(ImageDataset([by_rel[e.relpath] for e in errors], size), 64)

    start = time.perf_counter()
    phi_margin = scorer.featurize(train_batches, "margin")
    info["featurize_train_s"] = time.perf_counter() - start
    info["train_images"] = len(train)
    phi_loss = scorer.featurize(train_batches, "loss")
    psi_error = scorer.featurize(err_batches, "error")
    psi_loss = scorer.featurize(err_batches, "loss")  # raise the true-label loss
    margin = TrainFeatures.from_array(phi_margin)

    rows = []

    def add(name: str, scores: np.ndarray) -> None:
        rows.append(
            {
                "variant": name,
                "p@50": precision(scores, aligned, 50),
                "p@100": precision(scores, aligned, 100),
                "p@R": precision(scores, aligned, int(aligned.sum())),
                "AP": average_precision(scores, aligned),
            }
        )

    def kernel(train_feats, test_feats, damping=cfg.damping, aggregate=cfg.aggregate):
        return kernel_scores(
            train_feats, test_feats, replace(cfg, damping=damping, aggregate=aggregate)
        ).scores

    rng = np.random.default_rng(args.seed)
    add("random permutation", rng.random(len(train)))
    add("baseline: training loss, highest first", train_losses(model, train_batches))
    g_train = last_layer_loss_grads(model, train_batches)
    true_labels = torch.tensor([e.true for e in errors])
    g_test = last_layer_loss_grads(
        model, [(x, true_labels[i * 64 : i * 64 + len(x)]) for i, (x, _) in enumerate(err_batches)]
    )
    add("baseline: TracIn fc, sum_t -gL_t.gL_i (raises test loss)", -(g_train @ g_test.T).sum(1))
    add("baseline: TracIn fc, sum_t +gL_t.gL_i", (g_train @ g_test.T).sum(1))
    dots = phi_margin @ psi_error.T
    add("plain dot, no kernel: sum_t phi_i.psi_t", dots.sum(1))
    add("plain dot, no kernel, normalized", ((dots - dots.mean(0)) / dots.std(0)).sum(1))
    for damping in args.dampings:
        for aggregate in ("sum", "normalized"):
            add(
                f"kernel margin/error damping={damping:g} {aggregate}",
                kernel(margin, psi_error, damping, aggregate),
            )
    loss_feats = TrainFeatures.from_array(phi_loss)
    for damping in (0.1, 1.0):  # a GD step on i moves along -grad L_i: sign as the margin's
        add(
            f"kernel LOSS/error damping={damping:g} normalized (train side = loss gradient)",
            kernel(loss_feats, -psi_error, damping),
        )
    add(
        "kernel margin/LOSS (test side = true-label loss gradient) default",
        kernel(margin, psi_loss),
    )
    for k in (512, 1024):
        other = InfluenceScorer(model, None, replace(cfg, k=k), device="cpu")
        add(
            f"kernel default, k={k}",
            kernel(
                TrainFeatures.from_array(other.featurize(train_batches, "margin")),
                other.featurize(err_batches, "error"),
            ),
        )
    fc = InfluenceScorer(model, ["fc"], cfg, device="cpu")
    add(
        "kernel default, layers=fc only",
        kernel(
            TrainFeatures.from_array(fc.featurize(train_batches, "margin")),
            fc.featurize(err_batches, "error"),
        ),
    )
    with tempfile.TemporaryDirectory(prefix="bench-influence-cache-") as cache:
        start = time.perf_counter()
        request = ScoreRequest(train, test, size, ckpt_version, splits.classes, Path(cache))
        result = scorer.score(request)
        info["score_end_to_end_s"] = time.perf_counter() - start
    add(
        f"OURS: InfluenceScorer.score, default config (k={cfg.k}, damping={cfg.damping:g}, "
        f"{cfg.aggregate})",
        np.array([result.scores[s.relpath] for s in train]),
    )
    return rows, info


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-influence-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        start = time.perf_counter()
        data, ckpt_path, train_summary = prepare(args, work)
        args._ckpt = ckpt_path
        ckpt = load_checkpoint(ckpt_path)
        model = ckpt.model.eval()
        rows, info = variants(model, data, ckpt.version, args)
        cost, query = {}, {}
        per_image = info["featurize_train_s"] / info["train_images"]
        if args.cost_batches:
            log.info("measuring featurizing cost")
            splits = ImageFolderSplits.open(data, required=("train",))
            batches = preload(ImageDataset(splits.splits["train"], ckpt.image_size), 64)
            cost = measure_cost(model, batches[: args.cost_batches], args.k, rounds=3)
            per_image = cost["sketch_s_per_image"]
        if args.query_train:
            log.info("measuring the query (%d test x %d train)", args.query_test, args.query_train)
            query = measure_query(args.query_train, args.query_test, args.k, per_image)
        total = time.perf_counter() - start
    report = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "model": {
            "version": ckpt.version,
            "splits": train_summary.get("splits") or ckpt.metrics.get("splits"),
            "train_seconds": train_summary.get("train_seconds"),
        },
        "errors": info,
        "variants": rows,
        "cost": cost,
        "query": query,
        "total_seconds": total,
    }
    print_table(report)
    return report


def print_table(report: dict) -> None:
    out = sys.stderr
    splits = report["model"]["splits"] or {}
    accs = ", ".join(f"{s} {m['accuracy']:.3f}" for s, m in splits.items())
    info = report["errors"]
    print(f"\nmodel {report['model']['version']}: {accs}", file=out)
    print(
        f"test errors {info['errors']}, predicting the spurious colour "
        f"{info['errors_predicting_spurious_colour']}; "
        f"aligned base rate {info['aligned_base_rate']:.3f}",
        file=out,
    )
    columns = [("variant", "variant", "<84")]
    columns += [(name, name, ">6.3f") for name in ("p@50", "p@100", "p@R", "AP")]
    print("", *plain_table(columns, report["variants"], rule=False), sep="\n", file=out)
    print(f"(R = {info['aligned']} aligned training images)", file=out)
    c, q = report["cost"], report["query"]
    if c:
        print(
            f"\nfeaturizing / plain fwd+bwd ({c['images']} images, {c['parameters']} parameters):"
            f" sketch {c['sketch_ratio']:.2f}x, gaussian {c['gaussian_ratio']:.2f}x",
            file=out,
        )
    if q:
        print(
            f"query {q['test']} test x {q['train']} train (k={q['k']}): {q['query_s']:.1f} s "
            f"({q['query_ms_per_test_image']:.1f} ms per test image; "
            f"{q['query_over_featurizing_the_test_images']:.2f}x the time to featurize them); "
            f"train Gram accumulation {q['gram_over_featurizing']:.2f}x featurizing per image",
            file=out,
        )


if __name__ == "__main__":
    report = main(get_args_parser().parse_args())
    json.dump(report, sys.stdout, indent=1, default=float)
    sys.stdout.write("\n")
