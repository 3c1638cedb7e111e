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
import json
import time
from pathlib import Path

from robustar_ls.config import FINETUNE_DEFAULTS, InfluenceConfig, PairedConfig, TrainConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.models.checkpoint import load_checkpoint
from robustar_ls.workflows.simulate import rank_images, simulate


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default="/tmp/bench_budget", help="bench_budget.py's --work")
    p.add_argument("--results", default="/tmp/bench_propagate.jsonl")
    p.add_argument("--kinds", nargs="+", default=["patch", "background"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--spurious-fraction", type=float, default=0.3)
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--threshold", type=float, default=0.9)
    return p


def main(args) -> None:
    for kind in args.kinds:
        for seed in args.seeds:
            root = Path(args.work) / f"{kind}-{args.spurious_fraction}-s{seed}"
            data = ImageFolderSplits.open(root)
            ckpt = load_checkpoint(root / "shortcut.pt", classes=data.classes)
            ranking = rank_images(
                "influence",
                data,
                ckpt,
                seed=seed,
                influence=InfluenceConfig(device="cpu"),
                cache_root=root / ".influence",
            )
            for propagate in (None, args.threshold):
                started = time.perf_counter()
                row = simulate(
                    root,
                    root / "shortcut.pt",
                    order="influence",
                    budget=args.budget,
                    seed=seed,
                    paired=PairedConfig(),
                    train=TrainConfig(**{**FINETUNE_DEFAULTS}, seed=seed),
                    ranking=ranking,
                    propagate=propagate,
                )
                row = {**row, "kind": kind, "seed": seed, "propagate": propagate}
                row["seconds"] = round(time.perf_counter() - started, 1)
                with open(args.results, "a") as f:
                    f.write(json.dumps(row) + "\n")
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
