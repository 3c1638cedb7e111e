"""``robustar-ls train``: train a classifier from scratch or from a checkpoint."""

from __future__ import annotations

import argparse

from robustar_ls.cli.options import (
    add_model_flags,
    add_train_flags,
    model_config,
    print_json,
    tqdm_progress,
    train_config,
)
from robustar_ls.cli.validators import prepare_output_file

NAME = "train"
HELP = "train a classifier (from scratch or from --init)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder with train/<class>/…")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--init", default=None, help="checkpoint to fine-tune from")
    add_model_flags(p)
    add_train_flags(p)


def run(args: argparse.Namespace) -> int:
    from robustar_ls.train.run import train_classifier

    prepare_output_file(args.out)  # a bad --out fails now, not after the training
    summary = train_classifier(
        args.data,
        args.out,
        model_config(args),
        train_config(args),
        init=args.init,
        progress=tqdm_progress(not args.quiet),
    )
    if args.json:
        print_json(summary)
    else:
        accs = ", ".join(f"{s} {m['accuracy']:.3f}" for s, m in summary["splits"].items())
        print(f"saved {args.out} ({summary['model_version']}): accuracy {accs}")
    return 0
