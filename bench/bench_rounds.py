"""Rounds: painting the budget in R rounds (``simulate --rounds``) against one shot.

For each kind and seed: a small dataset (``make-dataset``, ``--per-class`` training images per
class, the cue on ``--spurious-fraction`` of them agreeing with the class on ``--bias``), a
shortcut model (``train``, width 16, ``--shortcut-epochs``), and its influence ranking (made
once: round 1's ranking, shared by every run on that model). Then for each budget and each R in
``--rounds``, ``robustar-ls simulate``'s job in rounds
(:func:`robustar_ls.workflows.simulate_rounds.simulate_rounds`, the default recipe ``auto``,
influence order): R = 1 is today's one shot; R > 1 paints the same number of images in R shares,
each round's model re-ranking the images not picked yet.

One JSON line per run goes to ``--results`` (a rerun skips the runs already there), with the
final and per-round gap recovered, accuracies, worst group and seconds (the influence reranking
of later rounds included, round 1's shared ranking not). ``--report`` prints the markdown tables
of bench/README.md ("Rounds: iterating vs one shot"), with each run's time divided by the one
shot's on the same model and budget, measured in the same process.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_rounds.py --kinds background digits
    PYTHONPATH=. python bench/bench_rounds.py --report
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import (
    append_jsonl,
    grid_or_report,
    make_parser,
    markdown_row,
    markdown_table,
    read_jsonl,
    seeded_recipe,
    train_shortcut,
)
from common import mean_cell as cell

from robustar_ls.config import InfluenceConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.models.checkpoint import load_checkpoint
from robustar_ls.workflows.simulate import rank_images
from robustar_ls.workflows.simulate_rounds import simulate_rounds

# small, for a shared 2-core CPU: 200 background images (4 classes), 300 digits (10 classes)
PER_CLASS = {"background": 50, "digits": 30, "patch": 50}
EVAL_PER_CLASS = {"background": 50}  # val and test; else the kind's default (digits 30 / 40)


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "all")
    p.add_argument("--work", default="/tmp/bench_rounds", help="datasets and shortcut models")
    p.add_argument("--results", default=None, help="JSON lines (default <work>/results.jsonl)")
    p.add_argument("--kinds", nargs="+", default=["background", "digits"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.05, 0.02])
    p.add_argument("--rounds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--per-class", type=int, default=None, help=f"default {PER_CLASS}")
    p.add_argument("--eval-per-class", type=int, default=None, help="val and test per class")
    p.add_argument("--spurious-fraction", type=float, default=1.0)
    p.add_argument("--bias", type=float, default=0.99)
    p.add_argument("--shortcut-epochs", type=int, default=10)
    p.add_argument("--recipe", default="auto", choices=["auto", "rebuild", "finetune"])
    p.add_argument(
        "--train-seeds",
        nargs="+",
        type=int,
        default=None,
        help="simulate's --seed: the training's seed and the review sample's draw (default: "
        "the dataset's seed); another seed on the same model and ranking measures the spread "
        "a seed alone makes (the noise control)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", action="store_true", help="print the tables of --results")
    return p


def shortcut_model(args, kind: str, seed: int) -> Path:
    """The dataset and its shortcut model, made once under ``--work``."""
    per_class = args.per_class or PER_CLASS[kind]
    evals = args.eval_per_class or EVAL_PER_CLASS.get(kind)
    name = f"{kind}-n{per_class}-e{evals}-f{args.spurious_fraction:g}-b{args.bias:g}-s{seed}"
    root = Path(args.work) / name
    cfg = SyntheticConfig(
        kind=kind,
        per_class=per_class,
        val_per_class=evals,
        test_per_class=evals,
        spurious_fraction=args.spurious_fraction,
        bias=args.bias,
        seed=seed,
    )
    train_shortcut(
        root, cfg, TrainConfig(epochs=args.shortcut_epochs, seed=seed, device=args.device)
    )
    return root


def results_path(args) -> Path:
    return Path(args.results) if args.results else Path(args.work) / "results.jsonl"


def key(row: dict) -> tuple:
    train_seed = row.get("train_seed", row["seed"])
    return (row["kind"], row["seed"], row["budget"], row["rounds"], row["recipe_asked"], train_seed)


def run_grid(args) -> None:
    """Seed 0 of every budget and kind first, so that a time-boxed grid compares them all."""
    path = results_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for budget in args.budgets:
            for kind in args.kinds:
                runs = [(kind, seed, budget, r, args.recipe, t)
                        for r in args.rounds for t in args.train_seeds or [seed]]  # fmt: skip
                done = {key(row) for row in read_jsonl(path)}
                todo = [run for run in runs if run not in done]
                if todo:
                    run_model(args, kind, seed, todo, path)


def run_model(args, kind: str, seed: int, todo: list[tuple], path: Path) -> None:
    root = shortcut_model(args, kind, seed)
    data = ImageFolderSplits.open(root)
    ckpt = load_checkpoint(root / "shortcut.pt", classes=data.classes)
    influence = InfluenceConfig(device=args.device)
    ranking = rank_images("influence", data, ckpt, seed=seed, influence=influence)  # cached
    for _, _, budget, rounds, _, train_seed in todo:
        recipe = seeded_recipe(args.recipe, train_seed, args.device)
        started = time.perf_counter()
        summary = simulate_rounds(
            root,
            root / "shortcut.pt",
            rounds=rounds,
            order="influence",
            budget=budget,
            seed=train_seed,
            recipe=recipe,
            influence=influence,
            ranking=ranking,
        )
        row = {
            "kind": kind,
            "seed": seed,
            "budget": budget,
            "rounds": rounds,
            "recipe_asked": args.recipe,
            "train_seed": train_seed,
            "images": len(data.splits["train"]),
            "seconds": round(time.perf_counter() - started, 1),
            **{k: summary[k] for k in ("picked", "annotated", "before", "after", "gap_recovered")},
            "recipe": (summary.get("recipe") or {}).get("name"),
            "worst_group": _worst(summary),
            "per_round": summary.get("rounds"),
        }
        append_jsonl(path, row)
        name = f"{kind} s{seed} t{train_seed} {budget:g} R={rounds}"
        print(f"{name}: gap {row['gap_recovered']}", flush=True)


def _worst(summary: dict) -> list[float | None]:
    """[worst group on test before, after] (None where the dataset has no groups)."""
    groups = summary.get("groups") or {}
    return [((groups.get(when) or {}).get("test") or {}).get("worst_group")
            for when in ("before", "after")]  # fmt: skip


# -- the report ------------------------------------------------------------------------------


def report(args) -> None:
    every = read_jsonl(results_path(args))
    rows = [r for r in every if r.get("train_seed", r["seed"]) == r["seed"]]
    kinds = [k for k in args.kinds if any(r["kind"] == k for r in rows)]
    rounds = sorted({r["rounds"] for r in rows})
    print("Gap recovered (mean, then each seed):\n")
    table = []
    for kind in kinds:
        for budget in sorted({r["budget"] for r in rows if r["kind"] == kind}, reverse=True):
            picked = [r for r in rows if (r["kind"], r["budget"]) == (kind, budget)]
            cells = [cell([r["gap_recovered"] for r in _by_seed(picked, n)]) for n in rounds]
            table.append([kind, f"{budget:g}", *cells])
    print("\n".join(markdown_table(["kind", "budget", *(f"R = {n}" for n in rounds)], table)))
    print(
        "\nTest accuracy, worst group and painted images after the last round; time ÷ one shot:\n"
    )
    head = ["kind", "budget", "R", "picked", "painted", "test before → after"]
    head += ["worst group after", "val after", "each round's test", "time ÷ one shot"]
    print("\n".join(markdown_table(head, [])))
    for kind in kinds:
        for budget in sorted({r["budget"] for r in rows if r["kind"] == kind}, reverse=True):
            picked = [r for r in rows if (r["kind"], r["budget"]) == (kind, budget)]
            for n in rounds:
                if _by_seed(picked, n):
                    print(_detail_line(kind, budget, n, picked))
    noise_table(every)


def noise_table(rows: list[dict]) -> None:
    """The same shortcut model and round-1 ranking run with another ``simulate --seed`` (the
    training's seed and the review sample's draw; R > 1: later picks follow that seed's
    models), beside the runs with the dataset's seed: the spread a seed alone makes."""
    others = [r for r in rows if r.get("train_seed", r["seed"]) != r["seed"]]
    if not others:
        return
    print("\nThe spread of the seed alone: same shortcut model and ranking, another --seed:\n")
    head = ["kind", "budget", "R", "dataset seed", "gap recovered by training seed"]
    print("\n".join(markdown_table(head, [])))
    cases = sorted({(r["kind"], r["budget"], r["rounds"], r["seed"]) for r in others})
    for kind, budget, n, seed in cases:
        same = [r for r in rows if (r["kind"], r["budget"], r["rounds"], r["seed"]) ==
                (kind, budget, n, seed)]  # fmt: skip
        same.sort(key=lambda r: r.get("train_seed", r["seed"]))
        each = ", ".join(
            f"{r.get('train_seed', r['seed'])}: {r['gap_recovered']:.2f}" for r in same
        )
        print(markdown_row([kind, f"{budget:g}", n, seed, each]))


def _detail_line(kind: str, budget: float, n: int, rows: list[dict]) -> str:
    mine = _by_seed(rows, n)
    one = {r["seed"]: r for r in _by_seed(rows, 1)}
    before = cell([r["before"]["test"] for r in mine])
    after = cell([r["after"]["test"] for r in mine])
    val = cell([r["after"]["val"] for r in mine])
    worst = cell([r["worst_group"][1] for r in mine if r["worst_group"][1] is not None])
    trail = " ; ".join(
        " → ".join(f"{e['after']['test']:.2f}" for e in (r["per_round"] or [])) or "–" for r in mine
    )
    ratios = [r["seconds"] / one[r["seed"]]["seconds"] for r in mine if r["seed"] in one]
    painted = "/".join(str(r["annotated"]) for r in mine)
    picks = "/".join(str(r["picked"]) for r in mine)
    cells = [kind, f"{budget:g}", n, picks, painted, f"{before} → {after}", worst, val, trail]
    return markdown_row([*cells, cell(ratios, 1)])


def _by_seed(rows: list[dict], rounds: int) -> list[dict]:
    return sorted((r for r in rows if r["rounds"] == rounds), key=lambda r: r["seed"])


def main() -> None:
    grid_or_report(get_args_parser().parse_args(), run_grid, report)


if __name__ == "__main__":
    main()
