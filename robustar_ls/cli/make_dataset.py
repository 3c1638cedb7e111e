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
    p.add_argument(
        "--kind",
        choices=["patch", "background", "digits"],
        default=None,
        help="patch: a class-coloured corner patch on a noisy shape; background: a "
        "class-tinted background behind a noisy shape; digits: real handwritten digits "
        "(scikit-learn's 8x8 digits, upscaled) on a class-coloured background, Biased-MNIST "
        'style (needs pip install "robustar-ls[digits]") (default patch)',
    )
    p.add_argument(
        "--size", type=positive_int, default=None, help="image side in pixels (default 32)"
    )
    p.add_argument(
        "--per-class",
        dest="per_class",
        type=positive_int,
        default=None,
        help="training images per class (default: patch 250, background 400, digits 100)",
    )
    p.add_argument(
        "--test-per-class",
        dest="test_per_class",
        type=non_negative_int,
        default=None,
        help="test images per class (default 100; digits 40)",
    )
    p.add_argument(
        "--val-per-class",
        dest="val_per_class",
        type=non_negative_int,
        default=None,
        help="val images per class (default 100; digits 30; digits: train + val + test "
        "per class at most 174, the fewest digits of a class)",
    )
    p.add_argument(
        "--classes",
        type=positive_int,
        default=None,
        help="number of classes (patch, background: 2-8, default 4; digits: 2-10, default 10)",
    )
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
