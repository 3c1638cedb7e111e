"""Annotation budget: how much of the shortcut gap do a few painted masks recover?

For each kind (``patch``, ``background``) and seed: make the dataset at a spurious fraction
(default 0.3), train a shortcut model, then run ``robustar_ls.workflows.simulate.simulate``
(the job behind ``robustar-ls simulate``) for every order (influence; ``turns``: influence
with the classes taking turns, ``simulate --balance-classes``; random; loss) and budget (1, 2,
5, 10, 20 % of the training images), plus the plain fine-tuning control (budget 0).

Resumable: every run appends one JSON line to ``--results``; a run already there is skipped, so
an interrupted grid continues where it stopped. Runs go in priority order (control and the 5 %
budget first, for every kind and seed), so a partial grid still answers the targets.
``--report`` only reads the results: prints the table (mean, spread = min..max over seeds) and
the targets, and draws the plot (matplotlib).

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_budget.py --work /tmp/bench_budget
    PYTHONPATH=. python bench/bench_budget.py --work /tmp/bench_budget --report \\
        --plot docs/budget_curve.png
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from common import append_jsonl, budget_shortcut_model, make_parser, markdown_table, read_jsonl

from robustar_ls.config import (
    FINETUNE_DEFAULTS,
    InfluenceConfig,
    PairedConfig,
    TrainConfig,
)
from robustar_ls.data.folders import ImageFolderSplits, classes_among, in_class_turns
from robustar_ls.models.checkpoint import load_checkpoint
from robustar_ls.train.recipe import Recipe
from robustar_ls.workflows.simulate import (
    pick_annotated,
    rank_images,
    simulate,
    spurious_status,
)

log = logging.getLogger("bench_budget")
ORDERS = ("influence", "turns", "random", "loss")


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "all")
    p.add_argument("--work", default="/tmp/bench_budget", help="datasets, models, results")
    p.add_argument(
        "--results",
        nargs="+",
        default=None,
        help="JSON lines (default <work>/results.jsonl); runs append to the first, --report "
        "reads them all",
    )
    p.add_argument("--kinds", nargs="+", default=["patch", "background"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--spurious-fraction", type=float, default=0.3)
    p.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="default: the kind's (patch 250, background 400)",
    )
    p.add_argument("--eval-per-class", type=int, default=50, help="val and test per class")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--shortcut-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=FINETUNE_DEFAULTS["epochs"], help="fine-tuning")
    p.add_argument("--fill", default="noise", help="the tables' fill (sync-train's default: swap)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1, 0.2])
    p.add_argument("--orders", nargs="+", default=list(ORDERS))
    p.add_argument("--device", default="cpu", help="cuda: train, score and fine-tune on a GPU")
    p.add_argument("--report", action="store_true", help="only print the table and plot")
    p.add_argument("--plot", default=None, help="PNG of gap recovered vs budget")
    return p


# -- runs -----------------------------------------------------------------------------------


def jobs(args) -> list[tuple[str, int, str, float]]:
    """(kind, seed, order, budget) in priority order: control, 5 %, then the other budgets."""
    first = [b for b in args.budgets if abs(b - 0.05) < 1e-9]
    rest = [b for b in args.budgets if b not in first]
    out = [(k, s, "plain", 0.0) for s in args.seeds for k in args.kinds]
    for budget in first + rest:
        out += [(k, s, o, budget) for s in args.seeds for k in args.kinds for o in args.orders]
    return out


def done_keys(results: Path) -> set[tuple]:
    rows = read_jsonl(results)
    return {(r["kind"], r["seed"], r["order"], r["budget"]) for r in rows if "gap_recovered" in r}


def run_grid(args, results: Path) -> None:
    done, rankings = done_keys(results), {}
    for kind, seed, order, budget in jobs(args):
        if (kind, seed, order, budget) in done:
            continue
        root = budget_shortcut_model(args, kind, seed, results)
        if order != "plain" and (kind, seed, order) not in rankings:
            rankings[kind, seed, order] = ranking_for(args, root, seed, order, rankings, kind)
        reused = same_as_plain(
            args, results, root, kind, seed, rankings.get((kind, seed, order)), budget
        )
        if reused is not None:
            append_jsonl(results, {**reused, "order": order, "kind": kind, "seed": seed})
            continue
        started = time.perf_counter()
        row = simulate(
            root,
            root / "shortcut.pt",
            order="influence" if order in ("plain", "turns") else order,
            budget=budget,
            seed=seed,
            paired=PairedConfig(fill=args.fill),
            recipe=Recipe.only(  # the budget grid measures Robustar's fine-tuning
                "finetune",
                TrainConfig(
                    **{**FINETUNE_DEFAULTS, "epochs": args.epochs}, seed=seed, device=args.device
                ),
            ),
            ranking=rankings.get((kind, seed, order)),
        )
        row = {**row, "order": order, "kind": kind, "seed": seed, "fill": args.fill}
        row["seconds"] = round(time.perf_counter() - started, 1)
        append_jsonl(results, row)
        log.info(
            "%s seed %d %s %.2f: gap recovered %s", kind, seed, order, budget, row["gap_recovered"]
        )


def ranking_for(args, root: Path, seed: int, order: str, rankings: dict, kind: str) -> list[str]:
    """``order``'s ranking of the training images; ``turns`` re-orders the influence ranking
    (scored once for both orders)."""
    data = ImageFolderSplits.open(root)
    base = "influence" if order == "turns" else order
    if (kind, seed, base) not in rankings:
        ckpt = load_checkpoint(root / "shortcut.pt", classes=data.classes)
        cfg = InfluenceConfig(device=args.device)
        rankings[kind, seed, base] = rank_images(
            base, data, ckpt, seed=seed, influence=cfg, cache_root=root / ".influence"
        )
    ranking = rankings[kind, seed, base]
    return in_class_turns(ranking) if order == "turns" else ranking


def same_as_plain(args, results, root, kind, seed, ranking, budget) -> dict | None:
    """When the picked images hold nothing to paint, the run *is* the plain control (same
    seed, no mask: the same training step for step); reuse its row instead of re-training."""
    if ranking is None:
        return None
    samples = ImageFolderSplits.open(root).splits["train"]
    status = spurious_status(root)
    picked, annotated = pick_annotated(ranking, budget, samples, root / "oracle_masks", status)
    if annotated:
        return None
    rows = read_jsonl(results)
    plain = [
        r for r in rows if (r.get("kind"), r.get("seed"), r.get("order")) == (kind, seed, "plain")
    ]
    if not plain:
        return None
    return {
        **plain[-1],
        "budget": budget,
        "picked": len(picked),
        "picked_classes": classes_among(picked),
        "annotated": 0,
        "spurious_annotated": 0,
        "reused_plain": True,
        "fill": args.fill,
    }


# -- report ---------------------------------------------------------------------------------


def cell(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    spread = f" ({min(values):.2f}..{max(values):.2f})" if len(values) > 1 else ""
    return f"{mean:.2f}{spread} n={len(values)}"


def curves(rows: list[dict], kind: str) -> dict[str, dict[float, list[float]]]:
    out: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        if r["kind"] == kind:
            out.setdefault(r["order"], {}).setdefault(r["budget"], []).append(r["gap_recovered"])
    return out


def mean_at(curve: dict[str, dict[float, list[float]]], order: str, budget: float):
    values = curve.get(order, {}).get(budget, [])
    return statistics.fmean(values) if values else None


def targets(curve) -> list[str]:
    rnd, plain = mean_at(curve, "random", 0.05), mean_at(curve, "plain", 0.0)
    lines = []
    for order in ("influence", "turns"):
        ours = mean_at(curve, order, 0.05)
        if ours is None:
            continue
        if rnd is not None:
            ok = ours >= rnd + 0.10
            lines.append(
                f"{order} 5% ({ours:.2f}) >= random 5% ({rnd:.2f}) + 0.10: "
                f"{'met' if ok else 'MISSED'}"
            )
        lines.append(f"{order} 5% ({ours:.2f}) >= 0.6: {'met' if ours >= 0.6 else 'MISSED'}")
    if plain is not None:
        lines.append(f"plain control ({plain:.2f}) <= 0.3: {'met' if plain <= 0.3 else 'MISSED'}")
    return lines


def report(args, paths: list[Path]) -> None:
    all_rows = read_jsonl(*paths)
    for r in all_rows:
        if r.get("run") == "shortcut":
            acc = r["accuracy"]
            print(
                f"shortcut model {r['kind']} seed {r['seed']}: "
                + ", ".join(f"{s} {a:.3f}" for s, a in acc.items())
            )
    rows = [r for r in all_rows if r.get("gap_recovered") is not None]
    budgets = sorted({r["budget"] for r in rows if r["budget"] > 0})
    for kind in args.kinds:
        curve = curves(rows, kind)
        print(
            f"\n**{kind}**, spurious fraction {args.spurious_fraction}: gap recovered, "
            "mean (min..max) over seeds\n"
        )
        control = cell(curve.get("plain", {}).get(0.0, []))
        table = [["plain fine-tuning (control)", control, *[""] * len(budgets)]]
        for order in args.orders:
            table.append([order, "", *(cell(curve.get(order, {}).get(b, [])) for b in budgets)])
        header = ["order", "0 %", *(f"{b:.0%}" for b in budgets)]
        print("\n".join(markdown_table(header, table)))
        print()
        for line in targets(curve):
            print(f"- {line}")
    if args.plot:
        plot(rows, args.kinds, Path(args.plot))


def plot(rows: list[dict], kinds: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        curve = curves(rows, kind)
        styles = (("influence", "o-"), ("turns", "D-"), ("random", "s--"), ("loss", "^:"))
        for order, style in styles:
            points = sorted((b, v) for b, v in curve.get(order, {}).items() if b > 0)
            if not points:
                continue
            xs = [100 * b for b, _ in points]
            means = [statistics.fmean(v) for _, v in points]
            label = "influence, classes taking turns" if order == "turns" else f"{order} order"
            ax.plot(xs, means, style, label=label)
            ax.fill_between(
                xs, [min(v) for _, v in points], [max(v) for _, v in points], alpha=0.15
            )
        plain = curve.get("plain", {}).get(0.0)
        if plain:
            ax.axhline(statistics.fmean(plain), color="grey", lw=1, label="no masks (control)")
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 5, 10, 20], ["1", "2", "5", "10", "20"])
        ax.set_xlabel("training images annotated (%)")
        ax.set_ylabel("gap recovered")
        top = max([1.0, *(max(v) for points in curve.values() for v in points.values() if v)])
        ax.set_ylim(-0.4, top + 0.05)  # a gap can be more than recovered (OOD above ID before)
        ax.set_title(f"{kind}, 30% of images spurious")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main(args) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("robustar_ls").setLevel(logging.WARNING)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in args.results] if args.results else [Path(args.work) / "results.jsonl"]
    if not args.report:
        run_grid(args, paths[0])
    report(args, paths)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
