"""``robustar-ls make-dataset``: write a synthetic spurious-feature dataset."""

from __future__ import annotations

import argparse

from robustar_ls.cli.options import UserError, print_json, settings_section, tqdm_progress
from robustar_ls.cli.validators import fraction, non_negative_int, positive_int
from robustar_ls.config import SyntheticConfig, build, pick

NAME = "make-dataset"
HELP = "write a synthetic spurious-feature dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder")
    p.add_argument("--kind", choices=["patch", "background"], default=None)
    p.add_argument(
        "--size", type=positive_int, default=None, help="image side in pixels (default 32)"
    )
    p.add_argument("--per-class", dest="per_class", type=positive_int, default=None)
    p.add_argument("--test-per-class", dest="test_per_class", type=non_negative_int, default=None)
    p.add_argument("--val-per-class", dest="val_per_class", type=non_negative_int, default=None)
    p.add_argument("--classes", type=positive_int, default=None)
    p.add_argument("--bias", type=fraction, default=None)
    p.add_argument("--spurious-fraction", dest="spurious_fraction", type=fraction, default=None)
    p.add_argument("--seed", type=non_negative_int, default=None)


def run(args: argparse.Namespace) -> int:
    from robustar_ls.data.synthetic import counts_text, make_dataset

    cfg = build(SyntheticConfig, settings_section(args, "synthetic"), pick(args, SyntheticConfig))
    progress = tqdm_progress(not args.quiet)
    bar = (lambda it: progress(it, desc="images", unit="img")) if progress else None
    try:
        summary = make_dataset(args.out, cfg, progress=bar)
    except ValueError as err:
        raise UserError(str(err)) from err
    if args.json:
        print_json(summary)
    else:
        images, status = counts_text(summary["images"]), counts_text(summary["train_status"])
        print(f"wrote {images} images to {args.out} (train images: {status})")
    return 0
