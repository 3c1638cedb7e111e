"""Mask R-CNN with the COCO weights: the served (fast) settings against COCO's, on your images.

Run from the repository root, with the real weights (``--weights`` or the torch hub cache,
where ``robustar-ls serve`` downloads them)::

    OMP_NUM_THREADS=2 python bench/compare_masks.py --images DIR [--limit 20]
        [--weights PATH] [--seg-size N] [--rpn-pre N] [--rpn-post N] [--detections N]

For each image (``.png``/``.jpg``/``.jpeg`` under ``DIR``, sorted, at most ``--limit``): the
object mask (the union of instances scoring at least 0.5, what the "Spurious" pre-annotation is
the complement of) with ``MaskRCNNConfig``'s defaults (or the flags) and with COCO's settings
(800/1333 px, 1000/1000 RPN proposals, 100 detections); their IoU, each one's object area and
seconds. Prints a table and one JSON line (mean and worst IoU, same-run speedup). An IoU near 1
means the reduced proposals and input size cost nothing on these images; the worst rows show
what they miss (typically small or crowded objects).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import add_segmenter_flags, make_parser, segmenter_overrides
from PIL import Image

from robustar_ls.config import MaskRCNNConfig
from robustar_ls.models.maskrcnn import MaskRCNNSegmenter

COCO = {
    "min_size": 800,
    "max_size": 1333,
    "rpn_pre_nms_top_n": 1000,
    "rpn_post_nms_top_n": 1000,
    "detections_per_img": 100,
}


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "paragraph")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--weights", default=None, help="COCO state_dict (default: torch hub cache)")
    add_segmenter_flags(p)
    p.add_argument("--device", default="cpu")
    return p


def settings(args) -> tuple[MaskRCNNConfig, MaskRCNNConfig]:
    """(the settings to check, COCO's)."""
    base = MaskRCNNConfig(weights=args.weights, device=args.device, batch_size=1)
    fast = dataclasses.replace(base, **segmenter_overrides(args))
    return fast, dataclasses.replace(base, **COCO)


def timed_mask(seg: MaskRCNNSegmenter, image: Image.Image) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    (mask,) = seg.object_masks([image])
    return mask, time.perf_counter() - start


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main(args: argparse.Namespace) -> dict:
    paths = sorted(
        p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")
    )[: args.limit]
    if not paths:
        raise SystemExit(f"no .png/.jpg images under {args.images}")
    fast_cfg, coco_cfg = settings(args)
    fast, coco = MaskRCNNSegmenter.from_config(fast_cfg), MaskRCNNSegmenter.from_config(coco_cfg)
    rows = []
    header = ("IoU", "area fast", "area COCO", "s fast", "s COCO")
    print(f"{'image':40s} " + " ".join(f"{h:>9s}" for h in header))
    with torch.inference_mode():
        for path in paths:
            image = Image.open(path).convert("RGB")
            a, ta = timed_mask(fast, image)
            b, tb = timed_mask(coco, image)
            rows.append({"image": str(path), "iou": iou(a, b), "t_fast": ta, "t_coco": tb})
            cells = (rows[-1]["iou"], a.mean(), b.mean(), ta, tb)
            print(f"{path.name[-40:]:40s} " + " ".join(f"{c:9.3f}" for c in cells))
    ious = [r["iou"] for r in rows]
    report = {
        "images": len(rows),
        "settings": {k: getattr(fast_cfg, k) for k in COCO},
        "mean_iou": round(statistics.mean(ious), 4),
        "worst_iou": round(min(ious), 4),
        "worst_image": min(rows, key=lambda r: r["iou"])["image"],
        "speedup": round(sum(r["t_coco"] for r in rows) / sum(r["t_fast"] for r in rows), 2),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
