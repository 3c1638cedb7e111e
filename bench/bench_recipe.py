"""Few masks on data we did not tune for: the default recipe against Robustar's fine-tuning.

For each kind (``patch``, ``background``, ``digits``: real handwriting), regime (the cue on
30 % of the training images, always agreeing; on every image, 99 % agreeing) and seed, a
shortcut model is trained once (``train``'s 10 epochs, width 16, cached under ``--work``), the
training images are ranked once by influence, then each method runs ``robustar-ls simulate``'s
job on the same ranking:

- ``none``: no mask, plain fine-tuning (the control);
- ``robustar``: the top 5 % painted, Robustar's paired fine-tuning (``--recipe finetune``, the
  default before this bench);
- ``default``: the top 5 % painted, the default recipe (``auto``);
- ``default-random``, ``default-1%``, ``robustar-1%``: the order's and the budget's share;
- ``dfr-groups``: an upper bound that needs labels the tool does not ask for: the shortcut
  model's last layer retrained (deep feature reweighting, Kirichenko et al. 2023) on half of
  the out-of-domain test split with its true (class, cue) groups balanced, evaluated on the
  other half (its gap is measured on that half);
- ``jtt``: just train twice (Liu et al. 2021), no masks: the shortcut model's misclassified
  training images copied ``JTT_UPWEIGHT`` times, then ``train``'s 10 epochs from scratch.

Each row goes to ``--results`` (JSON lines; a rerun skips what is there) with the gap
recovered, accuracies, group metrics where the dataset has them, the recipe chosen and the
seconds; ``--report`` prints the markdown tables of bench/README.md, including the time of the
default recipe over Robustar's fine-tuning on the same model in the same process.

    python bench/bench_recipe.py --kinds digits --seeds 0 1 2
    python bench/bench_recipe.py --report
"""

from __future__ import annotations

import argparse
import statistics
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

from robustar_ls.config import InfluenceConfig, ModelConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.models.checkpoint import load_checkpoint
from robustar_ls.models.zoo import head_and_last_block
from robustar_ls.train.run import train_classifier
from robustar_ls.workflows.simulate import gap_recovered, rank_images, simulate

REGIMES = {"0.3": (0.3, 1.0), "1.0": (1.0, 0.99)}  # name -> (spurious fraction, bias)
METHODS = {  # name -> (recipe, order, budget)
    "none": ("finetune", "influence", 0.0),
    "robustar": ("finetune", "influence", 0.05),
    "default": ("auto", "influence", 0.05),
    "default-random": ("auto", "random", 0.05),
    "robustar-1%": ("finetune", "influence", 0.01),
    "default-1%": ("auto", "influence", 0.01),
    "default-random-1%": ("auto", "random", 0.01),
    "dfr-groups": ("", "", 0.0),  # last-layer retraining with true group labels (no masks)
    "jtt": ("", "", 0.0),  # the shortcut model's training errors upweighted, trained again
}
JTT_UPWEIGHT = 20  # each training error seen this many times (Liu et al. 2021 use 20-100)


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "all")
    p.add_argument("--work", default="/tmp/bench_recipe", help="datasets and shortcut models")
    p.add_argument("--results", default="/tmp/bench_recipe.jsonl")
    p.add_argument("--kinds", nargs="+", default=["patch", "background", "digits"])
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--shortcut-epochs", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", action="store_true", help="print the tables of --results")
    return p


def shortcut_model(args, kind: str, regime: str, seed: int) -> Path:
    """The dataset (the kind's default sizes) and its shortcut model, made once."""
    root = Path(args.work) / f"{kind}-{regime}-s{seed}"
    fraction, bias = REGIMES[regime]
    cfg = SyntheticConfig(kind=kind, spurious_fraction=fraction, bias=bias, seed=seed)
    train_shortcut(
        root, cfg, TrainConfig(epochs=args.shortcut_epochs, seed=seed, device=args.device)
    )
    return root


def done(results: Path) -> set[tuple]:
    return {(r["kind"], r["regime"], r["seed"], r["method"]) for r in read_jsonl(results)}


def run_grid(args) -> None:
    results = Path(args.results)
    finished = done(results)
    for kind in args.kinds:
        for regime in args.regimes:
            for seed in args.seeds:
                todo = [m for m in args.methods if (kind, regime, seed, m) not in finished]
                if todo:
                    run_model(args, kind, regime, seed, todo, results)


def run_model(args, kind: str, regime: str, seed: int, methods: list[str], results: Path):
    root = shortcut_model(args, kind, regime, seed)
    data = ImageFolderSplits.open(root)
    ckpt = load_checkpoint(root / "shortcut.pt", classes=data.classes)
    influence = InfluenceConfig(device=args.device)
    rankings = {
        order: rank_images(order, data, ckpt, seed=seed, influence=influence)
        for order in {METHODS[m][1] for m in methods} - {""}
    }
    for method in methods:
        name, order, budget = METHODS[method]
        if method in ("dfr-groups", "jtt"):
            started = time.perf_counter()
            baseline = dfr_groups if method == "dfr-groups" else jtt
            row = baseline(root, data, ckpt, seed)
            row.update(kind=kind, regime=regime, seed=seed, method=method)
            row["seconds"] = round(time.perf_counter() - started, 1)
            append_jsonl(results, row)
            continue
        recipe = seeded_recipe(name, seed, args.device)
        started = time.perf_counter()
        row = simulate(
            root,
            root / "shortcut.pt",
            order=order,
            budget=budget,
            seed=seed,
            recipe=recipe,
            ranking=rankings[order],
        )
        row.update(kind=kind, regime=regime, seed=seed, method=method)
        row["seconds"] = round(time.perf_counter() - started, 1)
        append_jsonl(results, row)
        print(f"{kind} {regime} s{seed} {method}: gap {row['gap_recovered']}", flush=True)


def dfr_groups(root: Path, data: ImageFolderSplits, ckpt, seed: int) -> dict:
    """Deep feature reweighting with the true groups of half the test split (see the top)."""
    import random

    import torch
    from torch.nn import functional as F

    from robustar_ls.data.groups import load_groups
    from robustar_ls.train.run import make_loader

    samples = sorted(data.splits["test"], key=lambda s: s.relpath)
    random.Random(seed).shuffle(samples)
    held, kept = samples[: len(samples) // 2], samples[len(samples) // 2 :]
    cues = (load_groups(root) or {}).get("test", {})
    model = ckpt.model.eval()
    head = model.get_submodule(head_and_last_block(model)[-1])
    feats, logits, labels = _features(model, head, held, ckpt.image_size, make_loader)
    groups = [(int(y), cues.get(s.relpath)) for y, s in zip(labels, held, strict=True)]
    counts = {g: groups.count(g) for g in set(groups)}
    weights = torch.tensor([1.0 / counts[g] for g in groups])
    torch.manual_seed(seed)
    new = torch.nn.Linear(feats.shape[1], logits.shape[1])
    optimizer = torch.optim.Adam(new.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(500):
        optimizer.zero_grad()
        loss = (F.cross_entropy(new(feats), labels, reduction="none") * weights).sum()
        (loss / weights.sum()).backward()
        optimizer.step()
    test_feats, test_logits, test_labels = _features(
        model, head, kept, ckpt.image_size, make_loader
    )
    val_feats, val_logits, val_labels = _features(
        model, head, data.splits["val"], ckpt.image_size, make_loader
    )
    with torch.no_grad():
        before = {
            "val": _acc(val_logits, val_labels),
            "test": _acc(test_logits, test_labels),
        }
        after = {
            "val": _acc(new(val_feats), val_labels),
            "test": _acc(new(test_feats), test_labels),
        }
    return {"before": before, "after": after, "gap_recovered": gap_recovered(before, after)}


def jtt(root: Path, data: ImageFolderSplits, ckpt, seed: int) -> dict:
    """Just train twice: the errors of the shortcut model upweighted by copies, from scratch."""
    import shutil

    import torch

    from robustar_ls.train.run import make_loader

    train = data.splits["train"]
    _, logits, labels = _features(
        ckpt.model.eval(), ckpt.model.fc, train, ckpt.image_size, make_loader
    )
    errors = [
        s for s, wrong in zip(train, (logits.argmax(1) != labels).tolist(), strict=True) if wrong
    ]
    copy = root / "jtt"
    shutil.rmtree(copy, ignore_errors=True)
    for split, samples in data.splits.items():
        for sample in samples:
            target = copy / split / sample.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(sample.path)
    for sample in errors:
        for k in range(1, JTT_UPWEIGHT):
            target = copy / "train" / sample.relpath
            target.with_name(f"{target.stem}-jtt{k}{target.suffix}").symlink_to(sample.path)
    torch.manual_seed(seed)
    cfg = TrainConfig(epochs=10, seed=seed, device="cpu")
    summary = train_classifier(copy, copy / "jtt.pt", ModelConfig(), cfg)
    before = _saved_accuracies(ckpt)
    after = {split: m["accuracy"] for split, m in summary["splits"].items() if split != "train"}
    shutil.rmtree(copy, ignore_errors=True)
    row = {"before": before, "after": after, "gap_recovered": gap_recovered(before, after)}
    return {**row, "errors": len(errors)}


def _saved_accuracies(ckpt) -> dict[str, float]:
    splits = (ckpt.metrics or {}).get("splits") or {}
    return {s: m["accuracy"] for s, m in splits.items() if s in ("val", "test")}


def _features(model, head, samples, size, make_loader):
    """(inputs of the head, logits, labels) of ``samples``."""
    import torch

    seen: list = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].flatten(1)))
    try:
        logits, labels = [], []
        with torch.no_grad():
            for images, y in make_loader(list(samples), size, 256):
                logits.append(model(images))
                labels.append(y)
    finally:
        hook.remove()
    return torch.cat(seen), torch.cat(logits), torch.cat(labels)


def _acc(logits, labels) -> float:
    return float((logits.argmax(1) == labels).float().mean())


# -- the report ------------------------------------------------------------------------------


def report(args) -> None:
    rows = read_jsonl(args.results)
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    table = [
        [kind, regime]
        + [cell([r["gap_recovered"] for r in _rows(rows, kind, regime, m)]) for m in methods]
        for kind in args.kinds
        for regime in args.regimes
    ]
    print("\n".join(markdown_table(["kind", "regime", *methods], table)))
    print("\nID (val) drop, worst group and time of the default recipe (5 %, influence):\n")
    head = ("kind", "regime", "val drop", "worst group before → after", "time ÷ robustar")
    print("\n".join(markdown_table([*head, "recipe", "FP area"], [])))
    for kind in args.kinds:
        for regime in args.regimes:
            default = _rows(rows, kind, regime, "default")
            robustar = {r["seed"]: r for r in _rows(rows, kind, regime, "robustar")}
            drops = [r["before"]["val"] - r["after"]["val"] for r in default]
            groups = [_worst(r) for r in default if _worst(r) is not None]
            ratios = [r["seconds"] / robustar[r["seed"]]["seconds"] for r in default
                      if r["seed"] in robustar]  # fmt: skip
            worst = (
                f"{statistics.mean(g[0] for g in groups):.2f} → "
                f"{statistics.mean(g[1] for g in groups):.2f}"
                if groups
                else "–"
            )
            recipes = sorted({r["recipe"]["name"] for r in default if r.get("recipe")})
            areas = [
                r["propagation"]["false_positive_area"]
                for r in rows
                if (r["kind"], r["regime"]) == (kind, regime)
                and (r.get("propagation") or {}).get("false_positive_area") is not None
            ]
            fp = f"{max(areas):.3f} (max of {len(areas)})" if areas else "–"
            recipe = ", ".join(recipes) or "–"
            print(markdown_row([kind, regime, cell(drops), worst, cell(ratios), recipe, fp]))


def _rows(rows: list[dict], kind: str, regime: str, method: str) -> list[dict]:
    picked = [r for r in rows if (r["kind"], r["regime"], r["method"]) == (kind, regime, method)]
    return sorted(picked, key=lambda r: r["seed"])


def _worst(row: dict) -> tuple[float, float] | None:
    groups = row.get("groups") or {}
    before = (groups.get("before") or {}).get("test") or {}
    after = (groups.get("after") or {}).get("test") or {}
    if "worst_group" not in before or "worst_group" not in after:
        return None
    return before["worst_group"], after["worst_group"]


def main() -> None:
    grid_or_report(get_args_parser().parse_args(), run_grid, report)


if __name__ == "__main__":
    main()
