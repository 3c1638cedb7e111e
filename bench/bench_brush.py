"""Benchmark robustar_ls.labelstudio.brush against label_studio_sdk.converter.brush.

Run from the repository root::

    python bench/bench_brush.py [--size 512] [--repeat 5] [--seed 0]

Times encode (``mask_to_rle`` vs ``mask2rle``) and decode (``decode_rle_flat`` vs
``decode_rle``) on noisy masks, checks that the outputs agree, prints a table with
``SDK time / our time`` and a final JSON line.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable

import numpy as np
from common import make_parser, plain_table
from label_studio_sdk.converter import brush as sdk

from robustar_ls.labelstudio import brush


def blob_mask(size: int, rng: np.random.Generator, salt: float = 0.01) -> np.ndarray:
    """Binary 0/255 mask: random filled ellipses plus salt-and-pepper noise."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(12):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size / 40, size / 6, 2)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    mask ^= rng.random((size, size)) < salt
    return mask.astype(np.uint8) * 255


def saliency_mask(size: int, rng: np.random.Generator, noise: float = 6.0) -> np.ndarray:
    """Graded 0..255 mask: a sum of Gaussian bumps plus a little noise, like a saliency map."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    sal = np.zeros((size, size))
    for _ in range(6):
        cy, cx = rng.uniform(0, size, 2)
        sigma = rng.uniform(size / 30, size / 8)
        sal += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    sal = sal / sal.max() * 255 + rng.normal(0, noise, sal.shape)
    sal[sal < 20] = 0  # low saliency is cut to zero, as when thresholding a map
    return np.clip(sal, 0, 255).astype(np.uint8)


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Minimum wall time of one call of ``fn`` over ``repeat`` runs (seconds)."""
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def bench_case(name: str, mask: np.ndarray, repeat: int) -> dict[str, float | int | str]:
    """Time and cross-check encode/decode on one mask."""
    rle_sdk = sdk.mask2rle(mask.copy())
    rle_ours = brush.mask_to_rle(mask)
    if rle_sdk != rle_ours:
        raise SystemExit(f"{name}: encoder output differs from the SDK")
    if not np.array_equal(sdk.decode_rle(rle_sdk), brush.decode_rle_flat(rle_sdk)):
        raise SystemExit(f"{name}: decoder output differs from the SDK")
    h, w = mask.shape
    if not np.array_equal(brush.rle_to_mask(rle_ours, h, w), mask):
        raise SystemExit(f"{name}: round trip failed")

    enc_sdk = best_time(lambda: sdk.mask2rle(mask), repeat)
    enc_ours = best_time(lambda: brush.mask_to_rle(mask), repeat)
    dec_sdk = best_time(lambda: sdk.decode_rle(rle_sdk), repeat)
    dec_ours = best_time(lambda: brush.decode_rle_flat(rle_sdk), repeat)
    return {
        "case": name,
        "rle_bytes": len(rle_sdk),
        "encode_sdk_ms": enc_sdk * 1e3,
        "encode_ours_ms": enc_ours * 1e3,
        "encode_ratio": enc_sdk / enc_ours,
        "decode_sdk_ms": dec_sdk * 1e3,
        "decode_ours_ms": dec_ours * 1e3,
        "decode_ratio": dec_sdk / dec_ours,
    }


def print_table(rows: list[dict[str, float | int | str]]) -> None:
    """Print the results as a fixed-width table."""
    columns = [("case", "case", "<10"), ("rle bytes", "rle_bytes", ">10")]
    for way in ("enc", "dec"):
        name = {"enc": "encode", "dec": "decode"}[way]
        columns += [(f"{way} sdk ms", f"{name}_sdk_ms", ">11.2f")]
        columns += [(f"{way} ours ms", f"{name}_ours_ms", ">12.3f")]
        columns += [(f"{way} x", f"{name}_ratio", ">7.1f")]
    print("\n".join(plain_table(columns, rows)))


def main() -> None:
    """Parse arguments, run both cases, print table and JSON."""
    parser = make_parser(__doc__)
    parser.add_argument("--size", type=int, default=512, help="mask side length")
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats (min is taken)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    cases = {
        "blobs": blob_mask(args.size, rng),
        "saliency": saliency_mask(args.size, rng),
    }
    rows = [bench_case(name, mask, args.repeat) for name, mask in cases.items()]
    print(f"mask {args.size}x{args.size}, min of {args.repeat} runs; x = SDK time / our time")
    print_table(rows)
    summary = {
        "size": args.size,
        "repeat": args.repeat,
        "min_encode_ratio": min(r["encode_ratio"] for r in rows),
        "min_decode_ratio": min(r["decode_ratio"] for r in rows),
        "cases": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
