"""``robustar-ls eval``: accuracy of a checkpoint on every split, and where the dataset has
``groups.json`` (``make-dataset``'s datasets) worst-group and bias-conflicting accuracy."""

from __future__ import annotations

import argparse

from robustar_ls.cli.options import print_json

NAME = "eval"
HELP = "accuracy of a checkpoint on every split (and worst-group accuracy where known)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--arch", default=None, help="architecture, for a bare state_dict")
    p.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from robustar_ls.data.folders import ImageFolderSplits
    from robustar_ls.data.groups import group_text
    from robustar_ls.models.checkpoint import load_checkpoint
    from robustar_ls.models.zoo import default_device
    from robustar_ls.train.run import evaluate_splits

    data = ImageFolderSplits.open(args.data, required=())
    ckpt = load_checkpoint(args.checkpoint, arch=args.arch, classes=data.classes)
    device = default_device(args.device)
    splits = evaluate_splits(ckpt.model.to(device), data, ckpt.image_size, device)
    if args.json:
        print_json({"model_version": ckpt.version, "splits": splits})
    else:
        for split, m in splits.items():
            line, groups = f"{split:6s} accuracy {m['accuracy']:.4f}  (n={m['n']})", group_text(m)
            print(f"{line}  {groups}" if groups else line)
    return 0
