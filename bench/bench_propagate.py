"""Propagation at an annotation budget: influence order alone vs influence + propagation.

For each kind and seed, on the dataset and shortcut model that ``bench_budget.py`` made under
``--work`` (run it first), both runs of ``robustar_ls.workflows.simulate.simulate`` share one
influence ranking and the same fine-tuning seed; the second adds ``propagate`` (the learned
segmenter trained on the picked images' masks pairs the other images above the threshold).
One JSON line per run is appended to ``--results``.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_propagate.py --work /tmp/bench_budget \\
        --kinds patch --seeds 0 --results /tmp/bench_propagate.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import append_jsonl, budget_shortcut_model, make_parser, read_jsonl

from robustar_ls.config import (
    FINETUNE_DEFAULTS,
    InfluenceConfig,
    PairedConfig,
    TrainConfig,
)
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.models.checkpoint import load_checkpoint
from robustar_ls.train.recipe import REBUILD_DEFAULTS, Recipe
from robustar_ls.workflows.simulate import rank_images, simulate


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "all")
    p.add_argument("--work", default="/tmp/bench_budget", help="bench_budget.py's --work")
    p.add_argument("--results", default="/tmp/bench_propagate.jsonl")
    p.add_argument("--kinds", nargs="+", default=["patch", "background"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--spurious-fraction", type=float, default=0.3)
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--review-share", type=float, default=0.25, help="of the budget, random")
    p.add_argument("--fill", default="noise", help="the tables' fill (sync-train's default: swap)")
    p.add_argument("--per-class", type=int, default=None, help="as bench_budget.py's")
    p.add_argument("--eval-per-class", type=int, default=50, help="as bench_budget.py's")
    p.add_argument("--device", default="cpu", help="cuda: train, score and fine-tune on a GPU")
    p.add_argument(
        "--bias",
        type=float,
        default=1.0,
        help="share of feature images whose colour agrees with the class; 1/classes (0.25) = "
        "no shortcut to learn (folder <kind>-<fraction>-b<bias>-s<seed>)",
    )
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="paired training from the initial weights (sync-train --from-scratch's schedule)",
    )
    p.set_defaults(width=16, shortcut_epochs=10)  # bench_budget.py's shortcut model settings
    return p


def _done(results: str) -> set[tuple]:
    """(kind, fraction, bias, seed, propagate, review share, fill, from scratch) of the rows in
    ``results``."""
    rows = [r for r in read_jsonl(results) if r.get("run") != "shortcut"]
    return {
        (r["kind"], r.get("spurious_fraction"), r.get("bias", 1.0), r["seed"], r["propagate"])
        + (r.get("review_share"), r.get("fill", "noise"), r.get("from_scratch", False))
        for r in rows
    }


def main(args) -> None:
    done = _done(args.results)
    schedule = REBUILD_DEFAULTS if args.from_scratch else FINETUNE_DEFAULTS
    for kind in args.kinds:
        for seed in args.seeds:
            root = budget_shortcut_model(args, kind, seed, Path(args.results))
            data = ImageFolderSplits.open(root)
            ckpt = load_checkpoint(root / "shortcut.pt", classes=data.classes)
            ranking = rank_images(
                "influence",
                data,
                ckpt,
                seed=seed,
                influence=InfluenceConfig(device=args.device),
                cache_root=root / ".influence",
            )
            for propagate in (None, args.threshold):
                review = args.review_share if propagate is not None else None
                key = (kind, args.spurious_fraction, args.bias, seed, propagate, review)
                key += (args.fill, args.from_scratch)
                if key in done:
                    continue
                started = time.perf_counter()
                row = simulate(
                    root,
                    root / "shortcut.pt",
                    order="influence",
                    budget=args.budget,
                    seed=seed,
                    paired=PairedConfig(fill=args.fill),
                    recipe=Recipe.only(
                        "rebuild" if args.from_scratch else "finetune",
                        TrainConfig(**schedule, seed=seed, device=args.device),
                    ),
                    ranking=ranking,
                    propagate=propagate,
                    review_share=review,
                )
                row = {**row, "kind": kind, "seed": seed, "propagate": propagate}
                row.update(
                    spurious_fraction=args.spurious_fraction,
                    bias=args.bias,
                    review_share=review,
                    fill=args.fill,
                )
                row["seconds"] = round(time.perf_counter() - started, 1)
                append_jsonl(args.results, row)
                print(
                    kind,
                    seed,
                    propagate,
                    row["gap_recovered"],
                    row["after"],
                    row["propagation"],
                    flush=True,
                )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
