"""``robustar-ls learned-segmenter train|eval``: the learned spurious segmenter's command line
(``robustar-ls segmenter``, its name before it was told apart from Mask R-CNN, still works).

The work happens in :mod:`robustar_ls.train.segmenter` and
:mod:`robustar_ls.train.segmenter_eval`; this module only reads flags and prints results.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from robustar_ls.cli.options import common_parser, print_json, settings_section, tqdm_progress
from robustar_ls.cli.validators import positive_int
from robustar_ls.config import SpuriousSegmenterConfig, build, pick

NAME = "learned-segmenter"
DEPRECATED_NAMES = ("segmenter",)  # still accepted, with a warning
HELP = "learn the expert's notion of 'spurious' from the synced masks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    inner = p.add_subparsers(dest="segmenter_command", required=True, metavar="ACTION")
    t = inner.add_parser("train", help="train a segmenter on <data>/masks (or --masks DIR)")
    t.add_argument("--data", required=True, help="dataset folder (train/<class>/<image>)")
    t.add_argument("--masks", default=None, help="mask store (default <data>/masks)")
    t.add_argument(
        "--out", default=None, help="file to write (default <data>/.robustar/spurious_segmenter.pt)"
    )
    t.add_argument("--steps", type=positive_int, default=None, help="optimiser steps (default 300)")
    t.add_argument(
        "--width", type=positive_int, default=None, help="first-level channels (default 8)"
    )
    t.add_argument(
        "--size", type=positive_int, default=None, help="input side (default: the data's)"
    )
    t.add_argument("--max-size", dest="max_size", type=positive_int, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.set_defaults(action_func=run_segmenter_train)
    e = inner.add_parser("eval", help="IoU and false-positive area against reference masks")
    e.add_argument("--data", required=True, help="dataset folder")
    e.add_argument("--segmenter", default=None, help="file (default: the dataset's, see train)")
    e.add_argument("--reference", required=True, help="reference masks, e.g. <data>/oracle_masks")
    e.set_defaults(action_func=run_segmenter_eval)
    for parser in (t, e):  # the common flags after the action word too, without defaults
        for action in common_parser()._actions:
            if action.option_strings:
                action.default = argparse.SUPPRESS
                parser._add_action(action)


def run(args: argparse.Namespace) -> int:
    return args.action_func(args)


def run_segmenter_train(args: argparse.Namespace) -> int:
    from robustar_ls.data.folders import ImageFolderSplits
    from robustar_ls.data.masks import MaskStore, masks_root
    from robustar_ls.models.spurious_segmenter import (
        default_segmenter_path,
        load_spurious_segmenter,
    )
    from robustar_ls.train.segmenter import train_segmenter

    cfg = build(
        SpuriousSegmenterConfig,
        settings_section(args, "spurious_segmenter"),
        pick(args, SpuriousSegmenterConfig),
    )
    data = ImageFolderSplits.open(args.data)
    store = MaskStore(masks_root(args.data, args.masks))
    out = Path(args.out) if args.out else default_segmenter_path(args.data)
    parent = load_spurious_segmenter(out).version if out.is_file() else None
    seg = train_segmenter(data, store, cfg, tqdm_progress(not args.quiet), parent)
    seg.save(out)
    summary = {
        "out": str(out),
        "version": seg.version,
        "parent_version": parent,
        "metrics": seg.metrics,
        "config": asdict(seg.config),
    }
    if args.json:
        print_json(summary)
    else:
        print(f"learned segmenter {seg.version} trained on {seg.metrics['masks']} masks -> {out}")
    return 0


def run_segmenter_eval(args: argparse.Namespace) -> int:
    from robustar_ls.data.folders import ImageFolderSplits
    from robustar_ls.data.masks import MaskStore
    from robustar_ls.models.spurious_segmenter import (
        default_segmenter_path,
        load_spurious_segmenter,
    )
    from robustar_ls.train.segmenter_eval import evaluate_segmenter

    data = ImageFolderSplits.open(args.data)
    seg = load_spurious_segmenter(args.segmenter or default_segmenter_path(args.data))
    scores = evaluate_segmenter(seg, data, MaskStore(args.reference))
    if args.json:
        print_json({**scores.to_dict(), "version": seg.version})
    else:
        print(
            f"IoU {scores.iou_mean} over {scores.n} images; false-positive area "
            f"{scores.false_positive_area} over {scores.n_empty} images with no spurious pixels"
        )
    return 0
