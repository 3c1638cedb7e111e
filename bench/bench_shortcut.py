"""Do the built-in datasets learn their shortcut, for every seed?

For each kind, spurious fraction and seed: ``make-dataset --kind K --spurious-fraction F
--seed S`` (the other settings at their defaults) then ``train --arch resnet18_small --epochs 10
--seed S``, exactly as a new user would, and the target: val (in-distribution) >= 0.90 and
test (out-of-domain) <= val - 0.25.

Resumable: one JSON line per run in ``--results``; runs already there are skipped.

Calibration: ``--set NAME=VALUE`` overrides a generator constant (``radius_min``,
``radius_max``, ``tint_base``, ``tint_scale``, ``patch_divisor``, ``noise_sigma``), a dataset
setting (``per_class``, ``bias``) or a training setting (``batch_size``, ``lr``,
``weight_decay``, ``warmup``) for every run, and ``--label`` names the setting in the results,
so several candidate settings share one results file. ``--jobs N`` runs N runs at once (one
process each, one thread each on the CPU); ``--device cuda`` trains on a GPU.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_shortcut.py --work /tmp/bench_shortcut
    PYTHONPATH=. python bench/bench_shortcut.py --device cuda --jobs 12 --label wide-patch \
        --set patch_divisor=3 --work /tmp/sweep
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import torch
from common import append_jsonl, make_parser, markdown_table, read_jsonl

from robustar_ls.config import ModelConfig, SyntheticConfig, TrainConfig
from robustar_ls.data import synthetic
from robustar_ls.train import loop
from robustar_ls.train.run import train_classifier

# --set names -> (module, constant) for the generator's and the schedule's module constants
CONSTANTS = {
    "radius_min": (synthetic, "RADIUS_MIN"),
    "radius_max": (synthetic, "RADIUS_MAX"),
    "tint_base": (synthetic, "TINT_BASE"),
    "tint_scale": (synthetic, "TINT_SCALE"),
    "patch_divisor": (synthetic, "PATCH_DIVISOR"),
    "noise_sigma": (synthetic, "NOISE_SIGMA"),
    "warmup": (loop, "WARMUP_FRACTION"),
}
DATA_FIELDS = ("per_class", "bias")
TRAIN_FIELDS = ("batch_size", "lr", "weight_decay")


def parse_set(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in (*CONSTANTS, *DATA_FIELDS, *TRAIN_FIELDS):
        known = ", ".join((*CONSTANTS, *DATA_FIELDS, *TRAIN_FIELDS))
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, NAME one of {known}")
    number = float(value)
    return name, int(number) if number.is_integer() and name != "lr" else number


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "all")
    p.add_argument("--work", default="/tmp/bench_shortcut")
    p.add_argument("--results", default=None, help="JSON lines (default <work>/results.jsonl)")
    p.add_argument("--kinds", nargs="+", default=["patch", "background"])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.3, 1.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--set", dest="overrides", nargs="*", type=parse_set, default=[])
    p.add_argument("--label", default="defaults", help="names the --set setting in the results")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one process each")
    p.add_argument("--report", action="store_true", help="only print the table")
    return p


def run_one(work: Path, run: tuple, epochs: int, overrides: dict, device: str) -> dict:
    """One make-dataset + train run in this process, with ``overrides`` applied first."""
    label, kind, fraction, seed = run
    torch.set_num_threads(1)
    for name, value in overrides.items():
        if name in CONSTANTS:
            module, constant = CONSTANTS[name]
            setattr(module, constant, value)
    root = work / f"{label}-{kind}-{fraction}-s{seed}"
    shutil.rmtree(root, ignore_errors=True)
    data = {k: v for k, v in overrides.items() if k in DATA_FIELDS}
    cfg = SyntheticConfig(kind=kind, spurious_fraction=fraction, seed=seed, **data)
    started = time.perf_counter()
    synthetic.make_dataset(root, cfg)
    train = TrainConfig(epochs=epochs, seed=seed, device=device)
    train = replace(train, **{k: v for k, v in overrides.items() if k in TRAIN_FIELDS})
    summary = train_classifier(root, root / "model.pt", ModelConfig(), train)
    accs = {split: round(m["accuracy"], 4) for split, m in summary["splits"].items()}
    shutil.rmtree(root, ignore_errors=True)
    return {
        "label": label,
        "overrides": overrides,
        "kind": kind,
        "spurious_fraction": fraction,
        "seed": seed,
        "epochs": epochs,
        "accuracy": accs,
        "target_met": accs["val"] >= 0.90 and accs["test"] <= accs["val"] - 0.25,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_key(row: dict) -> tuple:
    """(setting label, kind, spurious fraction, seed) of a result row: what a run is."""
    return row.get("label", "defaults"), row["kind"], row["spurious_fraction"], row["seed"]


def report(rows: list[dict]) -> None:
    head = ["setting", "kind", "spurious fraction", "seed", "train", "val", "test"]
    table = []
    for r in sorted(rows, key=run_key):
        a = r["accuracy"]
        accs = [f"{a[s]:.3f}" for s in ("train", "val", "test")] + [f"{a['val'] - a['test']:.3f}"]
        target = "met" if r["target_met"] else "MISSED"
        table.append([*run_key(r), *accs, target])
    print("\n".join(markdown_table([*head, "val − test", "target"], table)))


def main(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else work / "results.jsonl"
    rows = read_jsonl(results)
    done = {run_key(r) for r in rows}
    runs = [
        (args.label, kind, fraction, seed)
        for seed in args.seeds
        for fraction in args.fractions
        for kind in args.kinds
    ]
    todo = [] if args.report else [run for run in runs if run not in done]
    overrides = dict(args.overrides)
    context = multiprocessing.get_context("spawn")  # CUDA cannot fork
    with ProcessPoolExecutor(max(1, args.jobs), mp_context=context) as pool:
        futures = [
            pool.submit(run_one, work, run, args.epochs, overrides, args.device) for run in todo
        ]
        for future in as_completed(futures):
            row = future.result()
            append_jsonl(results, row)
            rows.append(row)
            print(json.dumps(row), flush=True)
    report(rows)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
