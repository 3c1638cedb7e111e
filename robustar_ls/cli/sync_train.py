"""``robustar-ls sync-train``: sync masks from Label Studio, then paired training (the recipe)."""

from __future__ import annotations

import argparse

from robustar_ls.cli.options import (
    JobBar,
    UserError,
    add_label_studio_url,
    add_train_flags,
    label_studio_config,
    on_terminal,
    print_json,
    settings_section,
    tqdm_progress,
    train_config,
)
from robustar_ls.cli.validators import (
    fraction,
    non_negative_float,
    positive_int,
    prepare_output_file,
)
from robustar_ls.config import FINETUNE_DEFAULTS, PairedConfig, SyncConfig, build, pick
from robustar_ls.data.groups import change_text
from robustar_ls.train.recipe import REBUILD_DEFAULTS, RECIPES, Recipe
from robustar_ls.train.torchrun import Launch, launch

NAME = "sync-train"
HELP = "sync masks from Label Studio, then paired training of a checkpoint"
DESCRIPTION = (
    "With --label-studio-url, first pull the finished 'Spurious' brush annotations of project "
    "TITLE into DIR (default <data>/masks; API key from LABEL_STUDIO_API_KEY). Then train CKPT "
    "with paired training from the masks in DIR (--recipe: rebuilt around the objects when the "
    "learned segmenter finds the painted cue on many other images, else fine-tuned), evaluate "
    "before and after on every split "
    "and write the new checkpoint atomically (over CKPT unless --out). Under `torchrun "
    "--nproc-per-node N --no-python robustar-ls sync-train ...` it trains with "
    "DistributedDataParallel."
)

# The fill modes, listed here so that building the parser does not import torch.
FILL_MODE_CHOICES = ("noise", "weak_noise", "black", "colour", "stripes", "mixture", "swap")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder with train/<class>/...")
    p.add_argument("--checkpoint", required=True, help="checkpoint to fine-tune (the served one)")
    p.add_argument(
        "--masks",
        default=None,
        help="mask folder laid out as DIR/train/<class>/<stem>.png (default <data>/masks; "
        "e.g. <data>/oracle_masks for a synthetic dataset)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="where to write the new checkpoint (default: over --checkpoint, atomically)",
    )
    p.add_argument(
        "--fill",
        choices=FILL_MODE_CHOICES,
        default=None,
        help="what replaces the spurious pixels (default swap: those of an annotated image of "
        "another class)",
    )
    p.add_argument(
        "--align-weight",
        dest="align_weight",
        type=non_negative_float,
        default=None,
        help="λ of the logit-alignment term (default 0.1; 1 diverged in tests)",
    )
    p.add_argument(
        "--worst-of",
        dest="worst_of",
        type=positive_int,
        default=None,
        help="K > 1: of K random fills per image train on the worst (default 1)",
    )
    add_label_studio_url(
        p,
        help="sync finished 'Spurious' brush annotations from this Label Studio into the mask "
        "folder first (API key from LABEL_STUDIO_API_KEY)",
    )
    p.add_argument(
        "--project",
        default=None,
        help="title of the Label Studio project to sync (default robustar-ls)",
    )
    p.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="with --label-studio-url: report what the sync would change; write and train nothing",
    )
    add_segmenter_flags(p)
    add_recipe_flags(p)
    add_train_flags(p)


def add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """``--recipe`` (and ``--from-scratch``, its older spelling), shared with simulate."""
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        default="auto",
        help="rebuild: spread the masks with the learned segmenter, then paired training from "
        f"the initial weights (default {REBUILD_DEFAULTS['epochs']} epochs, lr "
        f"{REBUILD_DEFAULTS['lr']}); finetune: paired fine-tuning on the painted masks (default "
        f"{FINETUNE_DEFAULTS['epochs']} epochs, lr {FINETUNE_DEFAULTS['lr']}); auto (default): "
        "rebuild when the masks spread to at least as many images as were painted or cover half "
        "the images (a common cue, which fine-tuning does not unlearn), else finetune",
    )
    p.add_argument(
        "--from-scratch",
        dest="recipe",
        action="store_const",
        const="rebuild",
        help="the same as --recipe rebuild (kept for older scripts)",
    )


def recipe_config(args: argparse.Namespace) -> Recipe:
    """``--recipe`` with each recipe's schedule: its defaults < settings [train] < flags."""
    return Recipe(
        args.recipe,
        finetune=train_config(args, FINETUNE_DEFAULTS),
        rebuild=train_config(args, REBUILD_DEFAULTS),
    )


PROPAGATE_THRESHOLD = 0.9  # = robustar_ls.train.propagate.DEFAULT_THRESHOLD (not imported: torch)


def add_propagate_threshold_flag(p: argparse.ArgumentParser) -> None:
    """``--propagate-threshold``, shared by sync-train and simulate."""
    p.add_argument(
        "--propagate-threshold",
        dest="propagate_threshold",
        type=fraction,
        default=PROPAGATE_THRESHOLD,
        help=f"minimum mask confidence for --propagate (default {PROPAGATE_THRESHOLD})",
    )


def add_segmenter_flags(p: argparse.ArgumentParser) -> None:
    """The learned spurious segmenter: retrain after a sync, propagate its masks."""
    p.add_argument(
        "--no-segmenter-retrain",
        dest="segmenter_retrain",
        action="store_false",
        help="do not retrain the learned segmenter (<data>/.robustar/spurious_segmenter.pt) "
        "after a sync that changed masks",
    )
    p.add_argument(
        "--propagate",
        action="store_true",
        help="pair unannotated training images with the learned segmenter's confident masks "
        "(expert masks always win)",
    )
    add_propagate_threshold_flag(p)


def segmenter_step(args: argparse.Namespace):
    from robustar_ls.workflows.segmenter_step import SegmenterStep

    return SegmenterStep(
        retrain=args.segmenter_retrain,
        propagate=args.propagate,
        threshold=args.propagate_threshold,
    )


def run(args: argparse.Namespace) -> int:
    if not args.label_studio_url and (args.dry_run or args.project):
        raise UserError("--dry-run and --project need --label-studio-url")
    if args.out and not args.dry_run:
        prepare_output_file(args.out)  # a bad --out fails now, not after the training
    here = launch()  # this process under torchrun, read once
    # one bar, on the process that reports (rank 0 under torchrun)
    show = not (args.quiet or args.dry_run) and here.is_main
    show = show and on_terminal()  # in a log file, the log's line per epoch is the progress
    bar = JobBar() if show else None
    try:
        summary = _sync_and_train(args, bar, here)
    finally:
        if bar is not None:
            bar.close()
    if summary is None:  # a DDP worker other than rank 0: rank 0 reports
        return 0
    if args.json:
        print_json(_json_summary(summary))
    else:
        print(_text_summary(summary))
    return 0


def _sync_and_train(args: argparse.Namespace, bar: JobBar | None, here: Launch) -> dict | None:
    from robustar_ls.workflows.sync_train import SyncTrainRequest, sync_and_train

    request = SyncTrainRequest.open(
        args.data,
        args.checkpoint,
        args.masks,  # default <data>/masks
        label_studio=label_studio_config(args) if args.label_studio_url else None,
        paired=build(PairedConfig, settings_section(args, "paired"), pick(args, PairedConfig)),
        recipe=recipe_config(args),
        sync=build(SyncConfig, settings_section(args, "sync")),
        out=args.out,
        dry_run=args.dry_run,
        progress=tqdm_progress(not args.quiet),
        segmenter=None if args.dry_run else segmenter_step(args),  # a dry run trains nothing
        on_progress=bar,
        launch=here,
    )
    return sync_and_train(request)


def _json_summary(summary: dict) -> dict:
    if not summary["trained"]:  # --dry-run
        return summary
    keys = ("model_version", "parent_version", "before", "after", "annotated", "loss_terms")
    picked = {key: summary[key] for key in keys}
    return {
        **picked,
        "out": summary["out"],
        "sync": summary["sync"],
        "segmenter": summary.get("segmenter"),
        "recipe": summary.get("recipe"),
        "groups": summary.get("groups"),
        "saliency_in_masks": summary.get("saliency_in_masks"),
    }


def _text_summary(summary: dict) -> str:
    sync = summary["sync"]
    if not summary["trained"]:  # --dry-run
        return f"Label Studio sync (dry run): {sync_summary(sync)}"
    before = ", ".join(f"{s} {a:.3f}" for s, a in summary["before"].items())
    after = ", ".join(f"{s} {a:.3f}" for s, a in summary["after"].items())
    lines = [f"Label Studio sync: {sync_summary(sync)}"] if sync is not None else []
    recipe = summary.get("recipe") or {}
    lines.append(
        f"saved {summary['out']} ({summary['model_version']}, parent "
        f"{summary['parent_version']}); {summary['annotated']} annotated images\n"
        + (f"  recipe: {recipe['reason']}\n" if recipe else "")
        + f"  before: {before}\n  after:  {after}"
    )
    for split in summary["after"]:  # worst group, bias-conflicting: where the data has groups
        if text := change_text(summary.get("groups"), split):
            lines.append(f"  {split}: {text}")
    return "\n".join(lines)


def sync_summary(sync: dict) -> str:
    """One line from a SyncReport dict, then its errors, one per line."""
    c = sync["counts"]
    changes = f"{c['added']} added, {c['updated']} updated, {c['removed']} removed"
    line = (
        f"{changes}{' (would be)' if sync['dry_run'] else ''}; {c['unchanged']} unchanged, "
        f"{c['skipped']} skipped, {c['errors']} errors"
    )
    if c.get("ignored"):
        line += f"; {c['ignored']} annotated non-training tasks ignored (only train/ is synced)"
    return "\n".join([line, *(f"  error: {e['error']}" for e in sync["errors"])])
