"""Learning curve of the learned spurious segmenter: IoU and false alarms vs expert masks.

For each dataset kind, expert-mask count N and seed: an "expert" reviews random training
images until N of them carry the feature and paints those (the oracle mask); the featureless
images reviewed on the way are stored as empty masks (negatives; none when F = 1.0).
``robustar-ls learned-segmenter train``'s function learns from them; its ``eval``'s function
scores it on every other training image against the oracle masks. Kinds:

- ``patch``, ``background``: ``make-dataset`` with ``--spurious-fraction F``;
- ``watermark``: rendered here, unknown to the package: random background colours, a
  shape, and in a fraction F of images a text-like watermark (pseudo-glyph strokes, light,
  semi-transparent) whose bounding box is the spurious mask. No setting differs for it.

Also reported: ``fp_plain``, the false-positive area on 200 images of the same kind *without*
any feature (the only empty references when F = 1.0); how well the propagation confidence
(``mask_confidence``) separates good masks (the IoU of masks at confidence >= the default
threshold, and the share of feature images and of featureless images passing it); and the
segmenter's training time over one epoch of the classifier (resnet18_small, width 16, batch
64) on the same training split, measured in the same process.

Usage (about 25 minutes on 2 shared cores with the defaults)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_segmenter.py --fraction 0.3 \\
        --json-out /tmp/bench_segmenter.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import make_parser, markdown_table
from PIL import Image

from robustar_ls.config import SpuriousSegmenterConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.images import load_rgb
from robustar_ls.data.masks import MaskStore
from robustar_ls.data.synthetic import SHAPES, make_dataset, shape_mask
from robustar_ls.models.spurious_segmenter import MASK_THRESHOLD, mask_confidence
from robustar_ls.models.zoo import create_classifier
from robustar_ls.train.loop import EpochContext, make_optimizer, train_one_epoch
from robustar_ls.train.propagate import DEFAULT_THRESHOLD
from robustar_ls.train.run import make_loader
from robustar_ls.train.segmenter import train_segmenter
from robustar_ls.train.segmenter_eval import evaluate_segmenter, iou, reference_masks


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "all")
    p.add_argument("--kinds", nargs="+", default=["patch", "background", "watermark"])
    p.add_argument("--masks", nargs="+", type=int, default=[5, 10, 20, 50])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--fraction", type=float, default=0.3, help="--spurious-fraction")
    p.add_argument("--per-class", type=int, default=500, help="training images per class (4)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--work", default=None, help="datasets go here (default: a temp folder)")
    p.add_argument("--no-timing", action="store_true", help="skip the classifier-epoch ratio")
    p.add_argument("--json-out", default=None)
    p.add_argument(
        "--size-sweep", action="store_true", help="instead: training time vs input size (128 px)"
    )
    p.add_argument("--sweep-steps", type=int, default=300, help="steps per size-sweep run")
    return p


# -- the watermark dataset (rendered here; the package knows nothing of it) -------------------


def glyph_strokes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A pseudo-letter: 2-3 random strokes (bars, a box side, a diagonal) in an h x w cell."""
    cell = np.zeros((h, w), bool)
    for _ in range(rng.integers(2, 4)):
        kind = rng.integers(4)
        if kind == 0:
            cell[rng.integers(h), :] = True
        elif kind == 1:
            cell[:, rng.integers(w)] = True
        elif kind == 2:
            cell[np.arange(h), np.linspace(0, w - 1, h).round().astype(int)] = True
        else:
            cell[[0, -1], :], cell[:, [0, -1]] = True, True
    return cell


def render_watermark(rng, size: int, label: int, marked: bool):
    """An image (uint8) with a shape of class ``label`` and maybe a watermark; its box mask."""
    ys, xs = np.mgrid[0:size, 0:size]
    image = np.ones((size, size, 3)) * rng.uniform(0.1, 0.7, 3)
    image += (xs / size - 0.5)[..., None] * rng.uniform(-0.3, 0.3, 3)  # a gentle gradient
    centre = rng.uniform(0.3 * size, 0.7 * size, 2)
    obj = shape_mask(SHAPES[label], size, centre, rng.uniform(0.12, 0.25) * size, rng.uniform(0, 7))
    image[obj] = rng.uniform(0, 1, 3)
    mask = np.zeros((size, size), bool)
    if marked:
        gh, gw, n = max(5, size // 6), max(3, size // 10), int(rng.integers(3, 5))
        box_h, box_w = gh, n * (gw + 1) - 1
        y0, x0 = rng.integers(0, size - box_h), rng.integers(0, size - box_w)
        mask[y0 : y0 + box_h, x0 : x0 + box_w] = True
        for k in range(n):
            cell = glyph_strokes(rng, gh, gw)
            region = image[y0 : y0 + gh, x0 + k * (gw + 1) : x0 + k * (gw + 1) + gw]
            region[cell] = 0.35 * region[cell] + 0.65 * 0.97
    image = np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1)
    return (image * 255 + 0.5).astype(np.uint8), mask


def make_watermark_dataset(out: Path, per_class: int, size: int, fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    oracle, status = MaskStore(out / "oracle_masks"), {}
    for label in range(4):
        for i in range(per_class):
            rel = f"{SHAPES[label]}/{label * per_class + i:05d}.png"
            image, mask = render_watermark(rng, size, label, rng.random() < fraction)
            (out / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out / "train" / rel)
            oracle.write(rel, mask)
            status[rel] = "aligned" if mask.any() else "none"
    (out / "spurious.json").write_text(json.dumps(status, indent=1))


def make_kind(out: Path, kind: str, per_class: int, size: int, fraction: float, seed: int):
    if out.is_dir():
        return out
    if kind == "watermark":
        make_watermark_dataset(out, per_class, size, fraction, seed)
    else:
        cfg = SyntheticConfig(
            kind=kind,
            size=size,
            per_class=per_class,
            val_per_class=0,
            test_per_class=0,
            spurious_fraction=fraction,
            seed=seed,
        )
        make_dataset(out, cfg)
    return out


# -- one run ----------------------------------------------------------------------------------


def expert_masks(data_root: Path, store_root: Path, n: int, seed: int) -> MaskStore:
    """The expert reviews random training images until N carry the feature: those get their
    oracle mask, the featureless ones reviewed on the way an empty mask (a negative)."""
    status = json.loads((data_root / "spurious.json").read_text())
    oracle, store = MaskStore(data_root / "oracle_masks"), MaskStore(store_root)
    order = sorted(status)
    random.Random(seed).shuffle(order)
    painted = 0
    for rel in order:
        if painted == n:
            break
        painted += status[rel] != "none"
        store.write(rel, oracle.read(rel) & (status[rel] != "none"))
    return store


def confidence_check(seg, data, reference: MaskStore) -> dict:
    """Do masks passing the default propagation threshold match the reference?"""
    positive, empty = reference_masks(data, reference, seg.trained_on)
    probs = seg.predict_proba([load_rgb(s.path) for s, _ in positive])
    passed = [
        iou(p >= MASK_THRESHOLD, m)
        for (_, m), p in zip(positive, probs, strict=True)
        if mask_confidence(p) >= DEFAULT_THRESHOLD
    ]
    empty_probs = seg.predict_proba([load_rgb(s.path) for s in empty])
    false_pass = sum(mask_confidence(p) >= DEFAULT_THRESHOLD for p in empty_probs)
    return {
        "pass_rate_feature": round(len(passed) / max(len(positive), 1), 3),
        "iou_passed": round(float(np.mean(passed)), 4) if passed else None,
        "min_iou_passed": round(float(np.min(passed)), 4) if passed else None,
        "pass_rate_featureless": round(false_pass / max(len(empty), 1), 4) if empty else None,
    }


def one_run(data_root: Path, plain_root: Path, n: int, seed: int, work: Path) -> dict:
    data = ImageFolderSplits.open(data_root)
    store = expert_masks(data_root, work / f"expert-{data_root.name}-{n}-{seed}", n, seed)
    started = time.perf_counter()
    seg = train_segmenter(data, store, SpuriousSegmenterConfig(seed=seed))
    seconds = time.perf_counter() - started
    reference = MaskStore(data_root / "oracle_masks")
    scores = evaluate_segmenter(seg, data, reference)
    plain = ImageFolderSplits.open(plain_root)
    fp_plain = evaluate_segmenter(seg, plain, MaskStore(plain_root / "oracle_masks"), exclude=())
    return {
        "masks": n,
        "seed": seed,
        "negatives": sum(not store.read(r).any() for r in seg.trained_on),
        **scores.to_dict(),
        "fp_plain": fp_plain.false_positive_area,
        **confidence_check(seg, data, reference),
        "train_seconds": round(seconds, 2),
    }


def classifier_epoch_seconds(data_root: Path, seed: int = 0) -> float:
    """One training epoch of the default classifier on the same split (images pre-decoded)."""
    data = ImageFolderSplits.open(data_root)
    generator = torch.Generator().manual_seed(seed)
    loader = make_loader(data.splits["train"], 32, 64, shuffle=True, generator=generator)
    for i in range(len(loader.dataset)):
        loader.dataset.load(i)
    model = create_classifier("resnet18_small", len(data.classes), width=16)
    optimizer, scheduler = make_optimizer(model, TrainConfig(), len(loader))
    started = time.perf_counter()
    context = EpochContext(optimizer, scheduler, torch.device("cpu"), generator=generator)
    train_one_epoch(model, loader, context)
    return time.perf_counter() - started


def size_sweep(work: Path, steps: int, per_class: int) -> dict:
    """200 masks of 128 px background images, trained at max_size 32, 64, 96: time ratio."""
    cfg = SyntheticConfig(kind="background", size=128, per_class=per_class, val_per_class=0,
                          test_per_class=0, spurious_fraction=1.0)  # fmt: skip
    root = work / "background-128"
    if not root.is_dir():
        make_dataset(root, cfg)
    data, oracle = ImageFolderSplits.open(root), MaskStore(root / "oracle_masks")
    store = MaskStore(work / "expert-128")
    for sample in data.splits["train"][::2]:
        store.write(sample.relpath, oracle.read(sample.relpath))
    out = {}
    for max_size in (32, 64, 96):
        started = time.perf_counter()
        seg = train_segmenter(data, store, SpuriousSegmenterConfig(max_size=max_size, steps=steps))
        seconds = time.perf_counter() - started
        out[max_size] = {"seconds": round(seconds, 1), "masks": seg.metrics["masks"],
                         "iou": evaluate_segmenter(seg, data, oracle).iou_mean}  # fmt: skip
    for row in out.values():
        row["time_vs_32"] = round(row["seconds"] / out[32]["seconds"], 2)
    return out


# -- the whole bench --------------------------------------------------------------------------


def summarise(runs: list[dict]) -> dict:
    def mean(key):
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.mean(values), 4) if values else None

    keys = (
        "iou_mean",
        "false_positive_area",
        "fp_plain",
        "pass_rate_feature",
        "iou_passed",
        "min_iou_passed",
        "pass_rate_featureless",
        "train_seconds",
    )
    out = {k: mean(k) for k in keys}
    ious = [r["iou_mean"] for r in runs if r["iou_mean"] is not None]
    out["iou_min_seed"] = round(min(ious), 4) if ious else None
    return out


def print_table(results: dict) -> None:
    head = ["kind", "masks", "IoU (mean, worst seed)", "FP area", "FP plain"]
    head += ["conf pass feature / featureless", "IoU of passed (min)"]
    table = [
        [kind, n, f"{s['iou_mean']} ({s['iou_min_seed']})", s["false_positive_area"]]
        + [s["fp_plain"], f"{s['pass_rate_feature']} / {s['pass_rate_featureless']}"]
        + [f"{s['iou_passed']} ({s['min_iou_passed']})"]
        for kind, curve in results["curves"].items()
        for n, s in curve.items()
    ]
    print("\n".join(markdown_table(head, table)))


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_segmenter_"))
    if args.size_sweep:
        sweep = {"bench": "segmenter_size", "sizes": size_sweep(work, args.sweep_steps, 100)}
        print(json.dumps(sweep))
        return sweep
    results: dict = {
        "bench": "segmenter",
        "fraction": args.fraction,
        "per_class": args.per_class,
        "size": args.size,
        "threshold": DEFAULT_THRESHOLD,
        "curves": {},
        "runs": {},
        "time_ratio": {},
    }
    for kind in args.kinds:
        root = make_kind(
            work / f"{kind}-{args.fraction}", kind, args.per_class, args.size, args.fraction, 0
        )
        plain = make_kind(work / f"{kind}-plain", kind, 50, args.size, 0.0, 99)
        runs = [one_run(root, plain, n, s, work) for n in args.masks for s in args.seeds]
        results["runs"][kind] = runs
        results["curves"][kind] = {
            n: summarise([r for r in runs if r["masks"] == n]) for n in args.masks
        }
        if not args.no_timing:
            seg_seconds = statistics.mean(r["train_seconds"] for r in runs)
            epoch = classifier_epoch_seconds(root)
            results["time_ratio"][kind] = {
                "segmenter_s": round(seg_seconds, 2),
                "classifier_epoch_s": round(epoch, 2),
                "ratio": round(seg_seconds / epoch, 3),
            }
        print(json.dumps({kind: results["curves"][kind]}), file=sys.stderr, flush=True)
    print_table(results)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
