"""``robustar-ls simulate``: a simulated annotator, to measure what a robustness gain costs.

The job is :func:`robustar_ls.workflows.simulate.simulate`; this module reads flags and prints.
"""

from __future__ import annotations

import argparse

from robustar_ls.cli.options import (
    add_train_flags,
    print_json,
    settings_section,
    tqdm_progress,
)
from robustar_ls.cli.sync_train import (
    FILL_MODE_CHOICES,
    add_propagate_threshold_flag,
    add_recipe_flags,
    recipe_config,
)
from robustar_ls.cli.validators import fraction, positive_int, prepare_output_file
from robustar_ls.config import InfluenceConfig, PairedConfig, build, pick

NAME = "simulate"
HELP = (
    "simulated annotator: train as sync-train does from the reference masks of the first "
    "BUDGET x N training images in an order, and report the gap recovered"
)
DESCRIPTION = (
    "Order the training images (influence scores of CKPT, highest training loss, or a seeded "
    "shuffle), annotate the first BUDGET x N of them that have a reference mask in --masks, "
    "train from those masks as sync-train does (--recipe) and report accuracy before/after and "
    "gap_recovered = (OOD_after - OOD_before) / (ID_before - OOD_before) (ID = val, or train "
    "without val; OOD = test). --budget 0 = plain fine-tuning (the control). CKPT is never "
    "modified; --out writes the trained model. --rounds R paints the budget in R rounds: "
    "each round trains on every mask painted so far (from CKPT, as one shot would) and its "
    "model ranks the unpicked images for the next round."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder with train/, val/, test/")
    p.add_argument("--checkpoint", required=True, help="the model to fine-tune (not modified)")
    p.add_argument("--order", required=True, choices=["influence", "random", "loss"])
    p.add_argument(
        "--budget", required=True, type=fraction, help="fraction of training images to annotate"
    )
    p.add_argument("--masks", default=None, help="reference masks (default <data>/oracle_masks)")
    p.add_argument("--fill", choices=FILL_MODE_CHOICES, default=None, help="default swap")
    p.add_argument("--out", default=None, help="write the fine-tuned checkpoint here")
    p.add_argument(
        "--balance-classes",
        dest="balance_classes",
        action="store_true",
        help="the classes take turns in the order (the top influence images may be one class)",
    )
    p.add_argument(
        "--propagate",
        action="store_true",
        help="train the learned segmenter on the picked images' masks and pair the other "
        "images with its confident masks",
    )
    add_propagate_threshold_flag(p)
    add_recipe_flags(p)
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="split the budget's images into this many rounds (default 1: one shot); after "
        "each round, the model trained on every mask so far (from CKPT) re-ranks the images "
        "not picked yet by --order, and the next share is painted from the top; --json lists "
        "each round",
    )
    p.add_argument(
        "--propagate-review",
        dest="propagate_review",
        type=fraction,
        default=0.25,
        help="when propagating (--propagate, or the auto and rebuild recipes): share of the "
        "budget spent on a random review sample, whose featureless images teach the segmenter "
        "what is not spurious (default 0.25)",
    )
    add_train_flags(p)


def run(args: argparse.Namespace) -> int:
    from robustar_ls.workflows.simulate_rounds import simulate_rounds

    if args.out:
        prepare_output_file(args.out)
    recipe = recipe_config(args)
    influence = build(InfluenceConfig, settings_section(args, "influence"), {"device": args.device})
    paired = build(PairedConfig, settings_section(args, "paired"), pick(args, PairedConfig))
    summary = simulate_rounds(
        args.data,
        args.checkpoint,
        rounds=args.rounds,
        order=args.order,
        budget=args.budget,
        masks=args.masks,
        seed=recipe.finetune.seed,
        paired=paired,
        recipe=recipe,
        influence=influence,
        out=args.out,
        progress=tqdm_progress(not args.quiet),
        propagate=args.propagate_threshold if args.propagate else None,
        review_share=args.propagate_review,
        balance_classes=args.balance_classes,
    )
    if args.json:
        print_json(summary)
        return 0
    gap = summary["gap_recovered"]
    how = "paired training from scratch" if summary.get("from_scratch") else "paired fine-tuning"
    if summary.get("recipe"):
        how += f"\n  recipe: {summary['recipe']['reason']}"
    print(
        f"{_round_lines(summary.get('rounds'))}"
        f"{summary['order']} order, budget {summary['budget']:g}: {summary['annotated']} of "
        f"{summary['picked']} picked images annotated ({summary['spurious_annotated']} spurious)"
        f", {how}"
        f"\n  before: {_accs(summary['before'])}\n  after:  {_accs(summary['after'])}"
        f"{_group_lines(summary.get('groups'), summary['after'])}"
        f"\n  gap recovered: {'n/a (no gap)' if gap is None else f'{gap:.3f}'}"
    )
    return 0


def _round_lines(rounds: list[dict] | None) -> str:
    """One line per round (``--rounds``), before the final summary; nothing for one shot."""
    from robustar_ls.workflows.simulate_rounds import round_text

    return "".join(f"round {e['round']}: {round_text(e)}\n" for e in rounds or [])


def _group_lines(groups: dict | None, splits) -> str:
    """``\n  test: worst group 0.100→0.400, bias-conflicting ...`` per split that has them."""
    from robustar_ls.data.groups import change_text

    lines = [(split, change_text(groups, split)) for split in splits]
    return "".join(f"\n  {split}: {text}" for split, text in lines if text)


def _accs(accs: dict[str, float]) -> str:
    return ", ".join(f"{split} {acc:.3f}" for split, acc in accs.items())
