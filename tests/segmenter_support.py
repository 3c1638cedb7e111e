"""A spurious pattern the package's synthetic datasets do not have: a striped rectangle.

Random background colours, a random disc (the object) and, in half of the images, a
black-and-white diagonal stripe texture in a rectangle at a random place and size: colour
tells nothing, only the texture does. Written as an ImageFolder dataset with reference masks
(``oracle_masks/``) and ``spurious.json`` ("aligned" / "none"), like ``make-dataset``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from robustar_ls.data.masks import MaskStore


def stripe_image(rng: np.random.Generator, size: int, striped: bool):
    """An RGB uint8 image and its spurious mask (all False when not ``striped``)."""
    ys, xs = np.mgrid[0:size, 0:size]
    image = np.ones((size, size, 3)) * rng.uniform(0.15, 0.85, 3)
    cy, cx, r = *rng.uniform(0.3 * size, 0.7 * size, 2), rng.uniform(0.12, 0.22) * size
    image[(ys - cy) ** 2 + (xs - cx) ** 2 <= r**2] = rng.uniform(0, 1, 3)
    mask = np.zeros((size, size), dtype=bool)
    if striped:
        h, w = rng.integers(size // 4, size // 2, 2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        mask[y0 : y0 + h, x0 : x0 + w] = True
        light = ((xs + ys) // 2) % 2 == 0
        image[mask & light], image[mask & ~light] = 0.95, 0.05
    image = np.clip(image + rng.normal(0, 0.04, image.shape), 0, 1)
    return (image * 255).astype(np.uint8), mask


def make_stripe_dataset(root: Path, n: int = 48, size: int = 24, seed: int = 0) -> Path:
    """``n`` training images in two classes, every other one striped."""
    rng = np.random.default_rng(seed)
    oracle, status = MaskStore(root / "oracle_masks"), {}
    for i in range(n):
        rel = f"{'ab'[i % 4 // 2]}/{i:04d}.png"
        image, mask = stripe_image(rng, size, striped=i % 2 == 0)
        (root / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "train" / rel)
        oracle.write(rel, mask)
        status[rel] = "aligned" if mask.any() else "none"
    (root / "spurious.json").write_text(json.dumps(status))
    return root


def expert_store(root: Path, data: Path, relpaths: list[str]) -> MaskStore:
    """An "expert" mask store: the reference masks of ``relpaths`` (empty ones included)."""
    oracle, store = MaskStore(data / "oracle_masks"), MaskStore(root)
    for rel in relpaths:
        store.write(rel, oracle.read(rel))
    return store
