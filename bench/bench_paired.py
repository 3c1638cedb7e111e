"""Benchmark paired training on the synthetic ``patch`` and ``background`` datasets.

For each kind: make the dataset, train a shortcut model (small ResNet-18), then fine-tune it
for the same number of epochs in four ways and report out-of-domain (test) and in-distribution
(val) accuracy before and after:

(a) paired training with oracle masks on every spurious training image (spurious.json != none);
(b) the top 10% of training images by influence (``robustar_ls.explain.influence`` against
    the shortcut model's test errors) — or, with ``--top-source oracle``, by an ORACLE proxy
    (:func:`oracle_ranking`, labelled as such in the output);
(c) a random 10% of training images;
(d) plain fine-tuning without masks (the control).

Then paired training's time per epoch over plain training (``loop.train_one_epoch``) on the
same images, measured interleaved in one process several times, against the limit 1 + f
(f = fraction annotated).

Usage (about 22 minutes on 2 cores shared with other jobs, with the defaults)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_paired.py --work /tmp/bench_paired \\
        --json-out /tmp/bench_paired.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from common import make_parser

from robustar_ls.config import (
    InfluenceConfig,
    ModelConfig,
    PairedConfig,
    SyntheticConfig,
    TrainConfig,
)
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.data.tensors import ImageDataset, normalize
from robustar_ls.explain.influence import InfluenceScorer, ScoreRequest
from robustar_ls.models.checkpoint import load_checkpoint
from robustar_ls.train.fills import apply_fill
from robustar_ls.train.finetune import FinetuneRequest, paired_finetune
from robustar_ls.train.loop import EpochContext, make_optimizer, train_one_epoch
from robustar_ls.train.paired_data import PairedDataset, find_masks
from robustar_ls.train.paired_epoch import paired_train_one_epoch
from robustar_ls.train.run import train_classifier

log = logging.getLogger("bench_paired")


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "all")
    p.add_argument("--work", default="/tmp/bench_paired", help="datasets and checkpoints go here")
    p.add_argument("--kinds", nargs="+", default=["patch", "background"])
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument(
        "--spurious-fraction",
        type=float,
        default=None,
        help="share of training images with the feature (make-dataset default: 1.0)",
    )
    p.add_argument("--eval-per-class", type=int, default=75, help="val and test images per class")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--shortcut-epochs", type=int, default=10)
    p.add_argument("--shortcut-batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs, patch")
    p.add_argument("--background-epochs", type=int, default=20, help="fine-tuning, background")
    p.add_argument("--lr", type=float, default=0.02, help="fine-tuning learning rate (cosine)")
    p.add_argument("--batch-size", type=int, default=16, help="fine-tuning batch size")
    p.add_argument("--align-weight", type=float, default=0.1)
    p.add_argument("--fill", default="noise", help="fill mode for paired training")
    p.add_argument("--fraction", type=float, default=0.1, help="annotated share for (b), (c)")
    p.add_argument("--conditions", nargs="+", default=["all", "top", "random", "plain"])
    p.add_argument(
        "--top-source",
        choices=["auto", "influence", "oracle"],
        default="auto",
        help="ranking for (b): influence (auto = influence), or the oracle proxy",
    )
    p.add_argument("--timing-reps", type=int, default=3)
    p.add_argument("--timing-images", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="dataset and shortcut-model seed")
    p.add_argument(
        "--finetune-seed",
        type=int,
        default=None,
        help="seed of the random 10%%, the influence projection and fine-tuning (default --seed)",
    )
    p.add_argument("--json-out", default=None)
    return p


# -- selections -----------------------------------------------------------------------------


def influence_ranking(data_root: Path, checkpoint: Path, seed: int) -> list[str]:
    """Training images ranked by the influence scorer (``robustar_ls.explain.influence``,
    default settings, scored against the shortcut model's misclassified test images), most
    responsible first.
    """
    data = ImageFolderSplits.open(data_root)
    ckpt = load_checkpoint(checkpoint, classes=data.classes)
    scorer = InfluenceScorer(ckpt.model, None, InfluenceConfig(device="cpu", seed=seed))
    splits = data.splits
    request = ScoreRequest(
        splits["train"], splits["test"], ckpt.image_size, ckpt.version, data.classes
    )
    result = scorer.score(request)
    return result.ranked()


@torch.no_grad()
def oracle_ranking(data_root: Path, checkpoint: Path, seed: int) -> list[str]:
    """ORACLE proxy for influence: aligned spurious images first, then misaligned ones; within
    each, by how much the model relies on the spurious pixels (CE on the image with its oracle
    mask noise-filled minus CE on the image), taken round-robin over classes so that every
    class is equally represented.

    It reads the true masks of *every* training image, which an annotator never has: an
    optimistic stand-in, not an influence score.
    """
    data = ImageFolderSplits.open(data_root)
    samples = data.splits["train"]
    status = json.loads((data_root / "spurious.json").read_text())
    masks = find_masks(samples, data_root / "oracle_masks")
    ckpt = load_checkpoint(checkpoint)
    dataset = PairedDataset(samples, ckpt.image_size, masks)
    generator = torch.Generator().manual_seed(seed)
    reliance: dict[str, float] = {}
    for start in range(0, len(samples), 256):
        rows = [dataset[i] for i in range(start, min(start + 256, len(samples)))]
        images = torch.stack([r[0] for r in rows])
        mask = torch.stack([r[1] for r in rows])
        labels = torch.tensor([r[3] for r in rows])
        filled = apply_fill(images, mask, "noise", generator)
        ce = F.cross_entropy(ckpt.model(normalize(images)), labels, reduction="none")
        ce_filled = F.cross_entropy(ckpt.model(normalize(filled)), labels, reduction="none")
        for offset, gap in enumerate((ce_filled - ce).tolist()):
            reliance[samples[start + offset].relpath] = gap
    ranked: list[str] = []
    for group in ("aligned", "misaligned"):
        per_class: dict[str, list[str]] = {}
        for rel in sorted(reliance, key=lambda r: -reliance[r]):
            if status.get(rel) == group:
                per_class.setdefault(rel.split("/")[0], []).append(rel)
        queues = list(per_class.values())
        while any(queues):
            ranked.extend(q.pop(0) for q in queues if q)
    return ranked


def selections(data_root: Path, checkpoint: Path, args) -> dict:
    status = json.loads((data_root / "spurious.json").read_text())
    everything = sorted(status)
    k = max(1, round(args.fraction * len(everything)))
    if args.top_source == "oracle":
        ranked = oracle_ranking(data_root, checkpoint, args.finetune_seed)
        top_source = "ORACLE proxy, not influence"
    else:
        ranked = influence_ranking(data_root, checkpoint, args.finetune_seed)
        top_source = "influence"
    top = set(ranked[:k])
    return {
        "all": ({rel for rel, s in status.items() if s != "none"}, "every spurious image"),
        "top": (top, f"top {args.fraction:.0%} by {top_source}"),
        "random": (
            set(random.Random(args.finetune_seed).sample(everything, k)),
            f"random {args.fraction:.0%}",
        ),
        "plain": (None, "plain fine-tuning, no masks"),
    }


# -- timing ---------------------------------------------------------------------------------


def time_epochs(data_root: Path, checkpoint: Path, args) -> dict:
    """Seconds per epoch: plain vs paired at f = fraction and f = 1, interleaved, same images."""
    data = ImageFolderSplits.open(data_root)
    samples = data.splits["train"][:: max(1, len(data.splits["train"]) // args.timing_images)]
    samples = samples[: args.timing_images]
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model
    device = torch.device("cpu")
    all_masks = find_masks(samples, data_root / "oracle_masks")
    k = max(1, round(args.fraction * len(samples)))
    part = dict(random.Random(args.seed).sample(sorted(all_masks.items()), k))
    loaders = {
        "plain": torch.utils.data.DataLoader(
            ImageDataset(samples, ckpt.image_size), args.batch_size, True
        ),
        f"paired f={k / len(samples):.2f}": torch.utils.data.DataLoader(
            PairedDataset(samples, ckpt.image_size, part), args.batch_size, True
        ),
        "paired f=1.00": torch.utils.data.DataLoader(
            PairedDataset(samples, ckpt.image_size, all_masks), args.batch_size, True
        ),
    }
    for loader in loaders.values():  # decode once, outside the timed epochs
        for _ in loader:
            pass
    fractions = {name: (0.0 if name == "plain" else float(name.split("=")[1])) for name in loaders}
    cfg = TrainConfig(lr=args.lr)
    optimizer, scheduler = make_optimizer(model, cfg, 10**6)
    generator = torch.Generator().manual_seed(args.seed)
    context = EpochContext(optimizer, scheduler, device, generator=generator)
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.timing_reps):
        for name, loader in loaders.items():
            tick = time.perf_counter()
            if name == "plain":
                train_one_epoch(model, loader, context)
            else:
                paired_train_one_epoch(model, loader, context, PairedConfig())
            times[name].append(time.perf_counter() - tick)
    plain = statistics.median(times["plain"])
    out = {"images": len(samples), "reps": args.timing_reps, "seconds": times, "rows": []}
    for name in loaders:
        if name == "plain":
            continue
        ratio = statistics.median(times[name]) / plain
        limit = 1 + fractions[name]
        out["rows"].append(
            {"mode": name, "ratio": ratio, "limit": limit, "over_limit": ratio / limit - 1}
        )
    return out


# -- the benchmark --------------------------------------------------------------------------


def run_kind(kind: str, args, work: Path) -> dict:
    root = work / kind
    fraction = (
        {} if args.spurious_fraction is None else {"spurious_fraction": args.spurious_fraction}
    )
    synth = SyntheticConfig(
        **fraction,
        kind=kind,
        size=32,
        per_class=args.per_class,
        val_per_class=args.eval_per_class,
        test_per_class=args.eval_per_class,
        seed=args.seed,
    )
    if not (root / "dataset.json").is_file():
        make_dataset(root, synth)
    shortcut = work / f"{kind}-shortcut.pt"
    tick = time.perf_counter()
    if not shortcut.is_file():
        train_classifier(
            root,
            shortcut,
            ModelConfig(width=args.width),
            TrainConfig(
                epochs=args.shortcut_epochs,
                batch_size=args.shortcut_batch_size,
                device="cpu",
                seed=args.seed,
            ),
        )
    splits = load_checkpoint(shortcut).metrics["splits"]
    base = {s: m["accuracy"] for s, m in splits.items()}
    log.info("%s shortcut model: %s (%.0f s)", kind, base, time.perf_counter() - tick)
    epochs = args.background_epochs if kind == "background" else args.epochs
    chosen = selections(root, shortcut, args)
    status = json.loads((root / "spurious.json").read_text())
    rows = []
    for name in args.conditions:
        only, label = chosen[name]
        tick = time.perf_counter()
        result = paired_finetune(
            FinetuneRequest(
                root,
                shortcut,
                None if name == "plain" else root / "oracle_masks",
                PairedConfig(fill=args.fill, align_weight=args.align_weight),
                TrainConfig(
                    epochs=epochs,
                    lr=args.lr,
                    batch_size=args.batch_size,
                    device="cpu",
                    seed=args.finetune_seed,
                ),
                only=only,
                out=work / f"{kind}-{name}-{args.fill}-s{args.finetune_seed}.pt",
            )
        )
        rows.append(
            {
                "condition": name,
                "label": label,
                "annotated": result["annotated"],
                "selection": {
                    group: sum(status[rel] == group for rel in (only or ()))
                    for group in ("aligned", "misaligned", "none")
                },
                "before": result["before"],
                "after": result["after"],
                "last_epoch": result["loss_terms"],
                "seconds": time.perf_counter() - tick,
            }
        )
        log.info("%s %s: %s -> %s", kind, name, result["before"], result["after"])
    return {
        "kind": kind,
        "dataset": synth.__dict__,
        "train_images": len(json.loads((root / "spurious.json").read_text())),
        "shortcut": base,
        "epochs": epochs,
        "fill": args.fill,
        "finetune_seed": args.finetune_seed,
        "rows": rows,
    }


def print_table(results: list[dict], timing: dict | None) -> None:
    for res in results:
        s = res["shortcut"]
        print(
            f"\n{res['kind']}: {res['train_images']} training images, shortcut model "
            f"val {s['val']:.3f} / test {s['test']:.3f}; fine-tuning {res['epochs']} epochs, "
            f"fill {res['fill']}"
        )
        print(
            f"  {'condition':<48} {'n':>5} {'OOD before':>10} {'OOD after':>10} "
            f"{'ID after':>9} {'gap':>6}"
        )
        for row in res["rows"]:
            gap = row["after"]["val"] - row["after"]["test"]
            print(
                f"  {row['condition'] + ': ' + row['label']:<48} {row['annotated']:>5} "
                f"{row['before']['test']:>10.3f} {row['after']['test']:>10.3f} "
                f"{row['after']['val']:>9.3f} {gap:>6.3f}"
            )
    if timing:
        print(
            f"\ntime per epoch over plain training ({timing['images']} images, "
            f"median of {timing['reps']} interleaved):"
        )
        for row in timing["rows"]:
            print(
                f"  {row['mode']:<16} ratio {row['ratio']:.3f}  limit 1+f {row['limit']:.3f}  "
                f"({row['over_limit']:+.1%} over the limit)"
            )


def main(args: argparse.Namespace) -> int:
    if args.finetune_seed is None:
        args.finetune_seed = args.seed
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [run_kind(kind, args, work) for kind in args.kinds]
    timing = None
    if args.timing_reps > 0:
        timing = time_epochs(work / args.kinds[0], work / f"{args.kinds[0]}-shortcut.pt", args)
    print_table(results, timing)
    summary = {
        "command": " ".join(sys.argv),
        "threads": torch.get_num_threads(),
        "results": results,
        "timing": timing,
        "seconds": time.perf_counter() - started,
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
