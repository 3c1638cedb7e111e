"""Benchmark the ML backend's /predict: where the time goes, server overhead, batching.

Run from the repository root::

    OMP_NUM_THREADS=1 python bench/bench_predict.py [--images 16] [--size 96] [--batch-size 8]
        [--repeat 3] [--seg-size N] [--rpn-pre N] [--rpn-post N] [--detections N]
        [--baseline] [--no-maskrcnn] [--threads 1]

In one process, interleaved, ``--repeat`` times each:

1. **model calls alone**: classifier forward, Grad-CAM maps and Mask R-CNN ``spurious_masks``
   on pre-decoded images in batches of ``--batch-size`` (what any server must spend);
2. **/predict batched**: all tasks in one ``POST /predict`` through Flask's test client (image
   loading from disk, preprocessing, RLE encoding, JSON; prediction cache off);
3. **/predict one by one**: one ``POST /predict`` per task.

Prints the per-task latency split (image load = read + decode + resize + normalise /
classifier / Mask R-CNN / saliency / encoding = map resize + attention mask + RLE + result dicts
/ rest = Flask + JSON) from the predictor's timing dict; the server overhead ratio ``total
/predict ÷ its model calls`` (target ≤ 1.15 on CPU), measured within each /predict run (so it
does not depend on how loaded the shared machine was between runs), and as a cross-check
``fastest /predict ÷ fastest direct model calls``; and the batched vs one-by-one throughput
ratio. A table and one JSON line (medians over the repeats unless said otherwise).

Mask R-CNN is the real ``maskrcnn_resnet50_fpn_v2`` architecture with **random weights**
(nothing can be downloaded here): its timings are meaningful, its masks are not. It runs with
``MaskRCNNConfig``'s speed settings (input size, RPN proposals, detections per image), each
overridable by a flag, with its batch norms folded into the convolutions as served. So that
the mask head always works as hard as on a real photo, it keeps its top ``detections_per_img``
boxes whatever their score.

``--baseline`` also times the model calls with the COCO settings served before (800/1333 px
input, 1000/1000 RPN proposals, 20 detections kept: less than torchvision's 100, so the ratio
is conservative) on the same images, interleaved in the same run: ``speedup_vs_coco`` is
``baseline model calls ÷ model calls``. The machine's load (``/proc/loadavg``) is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import add_segmenter_flags, load_average, make_parser, segmenter_overrides
from PIL import Image

from robustar_ls.backend.app import create_app
from robustar_ls.backend.images import ImageFetcher
from robustar_ls.backend.model_holder import ModelHolder
from robustar_ls.backend.predictor import STAGES, Predictor, PredictorSettings
from robustar_ls.config import MaskRCNNConfig, SaliencyConfig, ServeConfig
from robustar_ls.data.tensors import image_to_tensor
from robustar_ls.models.checkpoint import save_checkpoint
from robustar_ls.models.fuse_bn import fuse_conv_bn
from robustar_ls.models.maskrcnn import (
    MaskRCNNSegmenter,
    apply_speed_settings,
    build_maskrcnn,
)
from robustar_ls.models.zoo import create_classifier

CLASSES = ["circle", "square", "triangle"]


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, "paragraph")
    p.add_argument("--images", type=int, default=16, help="tasks per /predict")
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--image-size", type=int, default=32, help="classifier input side")
    p.add_argument("--width", type=int, default=16, help="small-ResNet width")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    add_segmenter_flags(p)
    p.add_argument("--baseline", action="store_true", help="also time the COCO settings")
    p.add_argument("--no-maskrcnn", "--no-segmenter", dest="no_maskrcnn", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    return p


def make_images(root: Path, n: int, size: int, rng: np.random.Generator) -> list[str]:
    """Noisy backgrounds with a bright ellipse; returns paths relative to ``root``."""
    rels = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        array = rng.integers(0, 120, (size, size, 3)).astype(np.uint8)
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        ry, rx = rng.uniform(size * 0.1, size * 0.25, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        array[inside] = rng.integers(180, 256, 3)
        rel = f"bench/train/{CLASSES[i % len(CLASSES)]}/{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / rel)
        rels.append(rel)
    return rels


COCO = {  # the settings served before: torchvision's COCO defaults, 20 detections kept
    "min_size": 800,
    "max_size": 1333,
    "rpn_pre_nms_top_n": 1000,
    "rpn_post_nms_top_n": 1000,
    "detections_per_img": 20,
}


def segmenter_settings(args) -> MaskRCNNConfig:
    """MaskRCNNConfig's defaults, with the flags that were given."""
    cfg = MaskRCNNConfig(device="cpu", batch_size=args.batch_size, score_threshold=0.5)
    return dataclasses.replace(cfg, **segmenter_overrides(args))


def make_segmenter(cfg: MaskRCNNConfig) -> MaskRCNNSegmenter:
    model = apply_speed_settings(build_maskrcnn(None), cfg)  # random weights: timing only
    model.roi_heads.score_thresh = 0.0  # every image keeps detections_per_img boxes
    fuse_conv_bn(model.eval())  # as MaskRCNNSegmenter.from_config serves it
    return MaskRCNNSegmenter(model, cfg)


def model_calls_alone(
    predictor: Predictor,
    images: list[Image.Image],
    batch: int,
    segmenter: MaskRCNNSegmenter | None = None,
) -> float:
    """Seconds for classifier + Grad-CAM + Mask R-CNN on pre-decoded images, batched
    (``segmenter`` instead of the predictor's when given)."""
    segmenter = segmenter or predictor.segmenter
    served = predictor.holder.current()
    heatmaps = predictor.heatmaps  # Grad-CAM
    tensors = [image_to_tensor(image, served.image_size) for image in images]
    total = 0.0
    for start in range(0, len(images), batch):
        x = torch.stack(tensors[start : start + batch])
        t0 = time.perf_counter()
        with torch.no_grad():
            predicted = served.model(x).argmax(dim=1)
        heatmaps.maps(served, x, predicted)
        if segmenter is not None:
            segmenter.spurious_masks(images[start : start + batch])
        total += time.perf_counter() - t0
    return total


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "docroot"
        rels = make_images(root, args.images, args.size, rng)
        checkpoint = Path(tmp) / "model.pt"
        model = create_classifier("resnet18_small", len(CLASSES), width=args.width)
        version = save_checkpoint(
            checkpoint,
            model,
            arch="resnet18_small",
            classes=CLASSES,
            image_size=args.image_size,
            width=args.width,
        )
        cfg = ServeConfig(
            checkpoint=str(checkpoint),
            document_root=str(root),
            cache_dir=str(Path(tmp) / "cache"),
            secret="bench-secret-0123456789abcdef",
            device="cpu",
        )
        seg_cfg = segmenter_settings(args)
        segmenter = None if args.no_maskrcnn else make_segmenter(seg_cfg)
        coco_cfg = dataclasses.replace(seg_cfg, **COCO)
        baseline = make_segmenter(coco_cfg) if args.baseline and segmenter else None
        load_before = load_average()
        timing: dict[str, float] = {}
        predictor = Predictor(
            ModelHolder(checkpoint, device="cpu"),
            ImageFetcher.from_config(cfg),
            segmenter,
            PredictorSettings(
                saliency=SaliencyConfig(),
                batch_size=args.batch_size,
                cache_size=0,  # measure the work, not the cache
            ),
            timing=None,
        )
        client = create_app(cfg, predictor=predictor).test_client()
        tasks = [
            {"id": i, "data": {"image": f"/data/local-files/?d={rel}"}}
            for i, rel in enumerate(rels)
        ]
        decoded = [Image.open(root / rel).convert("RGB") for rel in rels]

        cpu: list[float] = []

        def post(batch_tasks) -> float:
            t0, c0 = time.perf_counter(), time.process_time()
            response = client.post("/predict", json={"tasks": batch_tasks})
            elapsed = time.perf_counter() - t0
            cpu.append(time.process_time() - c0)
            results = response.get_json()["results"]
            assert response.status_code == 200 and all(r["result"] for r in results)
            return elapsed

        post(tasks[:2])  # warm-up (first-call allocations, lazy imports)
        model_calls_alone(predictor, decoded[:2], args.batch_size)
        alone, batched, single, splits, coco, batched_cpu = [], [], [], [], [], []
        for _ in range(args.repeat):
            if baseline is not None:
                coco.append(model_calls_alone(predictor, decoded, args.batch_size, baseline))
            alone.append(model_calls_alone(predictor, decoded, args.batch_size))
            timing.clear()
            predictor.timer.seconds = timing
            batched.append(post(tasks))
            batched_cpu.append(cpu[-1])
            predictor.timer.seconds = None
            timing["rest (Flask, JSON)"] = batched[-1] - sum(timing.values())
            splits.append(dict(timing))
            single.append(sum(post([task]) for task in tasks))

    n = args.images
    med = statistics.median
    total = med(batched)
    stages = (*STAGES, "rest (Flask, JSON)")
    split = {stage: med(s.get(stage, 0.0) for s in splits) / n for stage in stages}
    # Same-run ratio: immune to the machine's load drifting between runs.
    in_run = med(
        sum(s.values()) / sum(s.get(k, 0.0) for k in ("classifier", "segmenter", "saliency"))
        for s in splits
    )
    report = {
        "bench": "predict",
        "images": n,
        "image_px": args.size,
        "batch_size": args.batch_size,
        "classifier": f"resnet18_small width {args.width}, {args.image_size} px input",
        "segmenter": "maskrcnn_resnet50_fpn_v2 (random weights, timing only)"
        if not args.no_maskrcnn
        else None,
        "segmenter_settings": {k: getattr(seg_cfg, k) for k in COCO} if segmenter else None,
        "speedup_vs_coco": round(med(c / a for c, a in zip(coco, alone, strict=True)), 2)
        if coco
        else None,
        "coco_model_calls_s": round(med(coco), 3) if coco else None,
        "loadavg_1min": [load_before, load_average()],
        "threads": args.threads,
        "model_version": version,
        "per_task_ms": {k: round(v * 1000, 2) for k, v in split.items()},
        "predict_batched_s": round(total, 4),
        # CPU seconds of this process per task: the wall time on an idle machine (1 thread)
        "predict_cpu_s_per_task": round(med(batched_cpu) / n, 3),
        "model_calls_alone_s": round(med(alone), 4),
        "server_overhead_ratio": round(in_run, 3),
        "server_overhead_ratio_vs_direct_calls": round(min(batched) / min(alone), 3),
        "one_by_one_s": round(med(single), 4),
        "batched_vs_one_by_one_throughput": round(med(single) / total, 3),
        "repeat": args.repeat,
    }
    print(
        f"/predict with {n} tasks of {args.size}x{args.size} px, batch size "
        f"{args.batch_size}, {args.threads} thread(s), median of {args.repeat}"
    )
    print(f"{'stage':24s} {'ms / task':>10s}")
    for stage, ms in report["per_task_ms"].items():
        print(f"{stage:24s} {ms:10.2f}")
    print(f"{'total /predict (batched)':24s} {total / n * 1000:10.2f}")
    print(f"{'model calls alone':24s} {med(alone) / n * 1000:10.2f}")
    print(f"{'/predict CPU time':24s} {med(batched_cpu) / n * 1000:10.2f}")
    print(
        f"server overhead  = /predict ÷ its own model calls (same run) "
        f"= {report['server_overhead_ratio']:.3f}  (target <= 1.15)"
    )
    print(
        f"                 = fastest /predict {min(batched):.3f} s ÷ fastest direct model calls "
        f"{min(alone):.3f} s = {report['server_overhead_ratio_vs_direct_calls']:.3f}"
    )
    print(
        f"batched vs 1-by-1 throughput = {med(single):.3f} s / {total:.3f} s "
        f"= {report['batched_vs_one_by_one_throughput']:.3f}x"
    )
    if coco:
        print(
            f"COCO settings' model calls {med(coco) / n * 1000:.0f} ms / task; "
            f"speedup = {report['speedup_vs_coco']:.2f}x (same run)"
        )
    print(f"load average (1 min) before / after: {report['loadavg_1min']}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
