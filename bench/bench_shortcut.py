"""Do the built-in datasets learn their shortcut, for every seed?

For each kind, spurious fraction and seed: ``make-dataset --kind K --spurious-fraction F
--seed S`` (the other settings at their defaults) then ``train --arch resnet18_small --epochs 10
--seed S``, exactly as a new user would, and the target: val (in-distribution) >= 0.90 and
test (out-of-domain) <= val - 0.25.

Resumable: one JSON line per run in ``--results``; runs already there are skipped.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_shortcut.py --work /tmp/bench_shortcut
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from robustar_ls.config import ModelConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.train.run import train_classifier


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default="/tmp/bench_shortcut")
    p.add_argument("--results", default=None, help="JSON lines (default <work>/results.jsonl)")
    p.add_argument("--kinds", nargs="+", default=["patch", "background"])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.3, 1.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--report", action="store_true", help="only print the table")
    return p


def run_one(work: Path, kind: str, fraction: float, seed: int, epochs: int) -> dict:
    root = work / f"{kind}-{fraction}-s{seed}"
    shutil.rmtree(root, ignore_errors=True)
    cfg = SyntheticConfig(kind=kind, spurious_fraction=fraction, seed=seed)
    started = time.perf_counter()
    make_dataset(root, cfg)
    train = TrainConfig(epochs=epochs, seed=seed, device="cpu")
    summary = train_classifier(root, root / "model.pt", ModelConfig(), train)
    accs = {split: round(m["accuracy"], 4) for split, m in summary["splits"].items()}
    shutil.rmtree(root, ignore_errors=True)
    return {
        "kind": kind,
        "spurious_fraction": fraction,
        "seed": seed,
        "epochs": epochs,
        "accuracy": accs,
        "target_met": accs["val"] >= 0.90 and accs["test"] <= accs["val"] - 0.25,
        "seconds": round(time.perf_counter() - started, 1),
    }


def report(rows: list[dict]) -> None:
    print("| kind | spurious fraction | seed | train | val | test | val − test | target |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["kind"], r["spurious_fraction"], r["seed"])):
        a = r["accuracy"]
        print(
            f"| {r['kind']} | {r['spurious_fraction']} | {r['seed']} | {a['train']:.3f} | "
            f"{a['val']:.3f} | {a['test']:.3f} | {a['val'] - a['test']:.3f} | "
            f"{'met' if r['target_met'] else 'MISSED'} |"
        )


def main(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else work / "results.jsonl"
    rows = [json.loads(x) for x in results.read_text().splitlines()] if results.is_file() else []
    done = {(r["kind"], r["spurious_fraction"], r["seed"]) for r in rows}
    if not args.report:
        for seed in args.seeds:
            for fraction in args.fractions:
                for kind in args.kinds:
                    if (kind, fraction, seed) in done:
                        continue
                    row = run_one(work, kind, fraction, seed, args.epochs)
                    with results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    report(rows)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
