"""CPU levers for Mask R-CNN, each against the served settings, interleaved in one run.

Run from the repository root::

    OMP_NUM_THREADS=1 python bench/bench_segmenter_levers.py [--images 2] [--size 512]
        [--repeat 2] [--variants default,fuse_bn,channels_last,threads2,...]

Times ``MaskRCNNSegmenter.spurious_masks`` (what ``/predict`` spends on Mask R-CNN: 99 % of
it) on the same synthetic images for each variant, round-robin ``--repeat`` times, and reports
per task the CPU seconds of this process (``time.process_time``; with 1 thread about the wall
time on an idle core) and the wall seconds, and each variant's CPU ratio to ``default``
(median of the per-round ratios, so load drifting between rounds cancels). The model is the real
``maskrcnn_resnet50_fpn_v2`` with random weights (nothing can be downloaded here); like
bench_predict.py it keeps its top ``detections_per_img`` boxes whatever their score. For the
exact levers (fuse_bn, channels_last, mkldnn off) the bench also reports the largest difference
of their masks from the default's on the same weights. The 1-minute load average is reported.

Variants: ``default`` (MaskRCNNConfig's settings, 1 thread), ``fuse_bn`` (batch norms folded
into the convolutions), ``channels_last`` (model weights and input in channels-last memory
format), ``threads2`` (2 torch threads), ``mkldnn_off`` (``torch.backends.mkldnn`` disabled),
``det5`` (5 detections for the mask head), ``post50`` (50 RPN proposals to the box head,
not 100), ``post50_pre150`` (and 150 per level before NMS, not 300), ``size448`` /
``size384`` (backbone input side), ``fuse_bn_cl`` (fuse_bn + channels_last), ``jit``
(fuse_bn, then the backbone, RPN head, box head and mask head traced, frozen and
``torch.jit.optimize_for_inference``-d) and ``inductor`` (fuse_bn, then the same four parts
``torch.compile``-d with inductor's weight freezing; the warm-up round pays the compilation).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import statistics
import time

import numpy as np
import torch
from common import load_average, make_parser
from PIL import Image

from robustar_ls.config import MaskRCNNConfig
from robustar_ls.models.fuse_bn import fuse_conv_bn
from robustar_ls.models.maskrcnn import (
    MaskRCNNSegmenter,
    apply_speed_settings,
    build_maskrcnn,
)

VARIANTS = {  # name: (MaskRCNNConfig overrides, fuse_bn, channels_last, threads, mkldnn)
    "default": ({}, False, False, 1, True),
    "fuse_bn": ({}, True, False, 1, True),
    "channels_last": ({}, False, True, 1, True),
    "fuse_bn_cl": ({}, True, True, 1, True),
    "threads2": ({}, False, False, 2, True),
    "mkldnn_off": ({}, False, False, 1, False),
    "det5": ({"detections_per_img": 5}, False, False, 1, True),
    "post50": ({"rpn_post_nms_top_n": 50}, False, False, 1, True),
    "post50_pre150": ({"rpn_post_nms_top_n": 50, "rpn_pre_nms_top_n": 150}, False, False, 1, True),
    "size448": ({"min_size": 448, "max_size": 747}, False, False, 1, True),
    "size384": ({"min_size": 384, "max_size": 640}, False, False, 1, True),
    "jit": ({}, True, False, 1, True),
    "inductor": ({}, True, False, 1, True),
}
EXACT = ("fuse_bn", "channels_last", "fuse_bn_cl", "mkldnn_off", "threads2", "jit", "inductor")
COMPILED_PARTS = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.mask_head")


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "paragraph")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    return p


def make_images(n: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    """Noisy backgrounds with a bright ellipse (as bench_predict.py)."""
    yy, xx = np.mgrid[:size, :size]
    images = []
    for _ in range(n):
        array = rng.integers(0, 120, (size, size, 3)).astype(np.uint8)
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        ry, rx = rng.uniform(size * 0.1, size * 0.25, 2)
        array[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.integers(180, 256, 3)
        images.append(Image.fromarray(array))
    return images


class ChannelsLastInput(torch.nn.Module):
    """Hands the detector's backbone its batched input in channels-last memory format."""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor):
        return self.body(x.contiguous(memory_format=torch.channels_last))


def compile_parts(model: torch.nn.Module, how: str, side: int) -> None:
    """Replace :data:`COMPILED_PARTS` of ``model`` by their TorchScript (``jit``: traced on
    example inputs of a ``side`` px image, frozen, optimised for inference) or inductor
    (``torch.compile`` with frozen weights) versions."""
    with torch.no_grad():
        features = list(model.backbone(torch.rand(1, 3, side, side)).values())
    examples = {
        "backbone": (torch.rand(1, 3, side, side),),
        "rpn.head": (features,),
        "roi_heads.box_head": (torch.rand(100, 256, 7, 7),),
        "roi_heads.mask_head": (torch.rand(10, 256, 14, 14),),
    }
    if how == "inductor":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    for dotted in COMPILED_PARTS:
        *path, last = dotted.split(".")
        owner = functools.reduce(getattr, path, model)
        part = getattr(owner, last)
        if how == "jit":
            with torch.no_grad():
                traced = torch.jit.trace(part, examples[dotted], strict=False)
                part = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        else:
            part = torch.compile(part)
        setattr(owner, last, part)


def make_variant(
    base: torch.nn.Module, name: str, n_images: int
) -> tuple[MaskRCNNSegmenter, int, bool]:
    overrides, fuse, channels_last, threads, mkldnn = VARIANTS[name]
    cfg = dataclasses.replace(
        MaskRCNNConfig(device="cpu", batch_size=n_images, score_threshold=0.5), **overrides
    )
    model = apply_speed_settings(copy.deepcopy(base), cfg).eval()
    if fuse:
        fuse_conv_bn(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.backbone.body = ChannelsLastInput(model.backbone.body)
    if name in ("jit", "inductor"):
        compile_parts(model, name, cfg.min_size)
    return MaskRCNNSegmenter(model, cfg), threads, mkldnn


def run_once(segmenter: MaskRCNNSegmenter, images, threads: int, mkldnn: bool):
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        detections = segmenter.detect(images)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(1)
    return wall, cpu, detections


def main(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    images = make_images(args.images, args.size, np.random.default_rng(args.seed))
    base = build_maskrcnn(None).eval()
    base.roi_heads.score_thresh = 0.0  # every image keeps detections_per_img boxes
    names = [n.strip() for n in args.variants.split(",")]
    if names[0] != "default":
        names.insert(0, "default")
    variants = {n: make_variant(base, n, args.images) for n in names}
    for segmenter, threads, mkldnn in variants.values():  # warm-up
        run_once(segmenter, images, threads, mkldnn)
    load_before = load_average()
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    diff: dict[str, float] = {}
    for _ in range(args.repeat):
        reference = None
        for name in names:
            w, c, dets = run_once(variants[name][0], images, variants[name][1], variants[name][2])
            wall[name].append(w / args.images)
            cpu[name].append(c / args.images)
            if name == "default":
                reference = dets
            elif name in EXACT and reference is not None:
                diff[name] = max(
                    float((a["masks"] - b["masks"]).abs().max())
                    for a, b in zip(reference, dets, strict=True)
                )
    med = statistics.median
    report = {
        "bench": "segmenter_levers",
        "images": args.images,
        "image_px": args.size,
        "repeat": args.repeat,
        "loadavg_1min": [load_before, load_average()],
        "cpu_s_per_task": {n: round(med(cpu[n]), 3) for n in names},
        "wall_s_per_task": {n: round(med(wall[n]), 3) for n in names},
        "cpu_ratio_vs_default": {
            n: round(med(c / d for c, d in zip(cpu[n], cpu["default"], strict=True)), 3)
            for n in names
        },
        "wall_ratio_vs_default": {
            n: round(med(w / d for w, d in zip(wall[n], wall["default"], strict=True)), 3)
            for n in names
        },
        "max_mask_prob_diff_vs_default": {n: round(v, 6) for n, v in diff.items()},
    }
    print(
        f"Mask R-CNN per {args.size}x{args.size} px task, {args.images} images, "
        f"median of {args.repeat} rounds"
    )
    print(f"{'variant':14s} {'CPU s':>7s} {'wall s':>7s} {'CPU ratio':>10s} {'wall ratio':>10s}")
    for n in names:
        print(
            f"{n:14s} {report['cpu_s_per_task'][n]:7.3f} {report['wall_s_per_task'][n]:7.3f} "
            f"{report['cpu_ratio_vs_default'][n]:10.3f} {report['wall_ratio_vs_default'][n]:10.3f}"
        )
    print(f"max mask probability difference vs default: {report['max_mask_prob_diff_vs_default']}")
    print(f"load average (1 min) before / after: {report['loadavg_1min']}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
