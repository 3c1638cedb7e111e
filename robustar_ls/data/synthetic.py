"""Spurious-feature benchmark datasets: objects whose class a shortcut also predicts.

Each image is an object (the feature a robust model should use) plus, maybe, a spurious
feature whose colour predicts the class in training:

- ``patch``: a noisy shape and a small coloured square in a corner; its colour is the class's
  colour;
- ``background``: a noisy shape; the background is tinted with the class's colour;
- ``digits``: a real handwritten digit (scikit-learn's 8x8 digits, upscaled; classes "0".."9")
  drawn light on a background in the class's colour, or black without the feature
  (Biased-MNIST, Bahng et al. 2020; ``data/digits.py``, which needs scikit-learn).

Training split: a fraction ``spurious_fraction`` of images carry the feature; in a fraction
``bias`` of those it agrees with the class ("aligned"), otherwise it shows another class's
colour ("misaligned"); the rest are neutral ("none": no patch, plain grey background; black
for ``digits``).
``val/`` has the same statistics (held out, in-distribution). ``test/`` is out-of-domain: every
image carries the feature, with a colour independent of the class.

Calibrated so that a plain ``train --arch resnet18_small --epochs 10`` learns the shortcut
*partly* (val >= 0.90, test <= val - 0.25) and keeps it under more training. At spurious
fraction 0.3 ``background`` meets it on every seed measured (CPU and GPU); ``patch`` does not
reliably: whether its shapes are learned in 10 epochs, and whether they then beat the patch,
changes from run to run (the matrix in ``bench/README.md``, ``bench/bench_shortcut.py``):

- the cue is learnable from the first epoch: the patch is 1/3 of the image side (10 px at
  32 px; 1/4 lost to the learned shapes on some seeds) and carries no pixel noise
  (``PATCH_NOISE = 0``), so it is its class's colour exactly; the background tint is
  ``0.42 + 0.3 x colour`` (first ``0.35 + 0.5 x colour``, which held the shapes back, then
  ``0.42 + 0.16 x colour``, too weak once the shapes are learned);
- the objects take several epochs, yet are learned in 10 (with ``train``'s batch 16): pixel
  noise σ ``NOISE_SIGMA`` = 0.1 over the whole image (patch excepted), radius 5-9 px at 32 px
  (4-9 left val at 0.70-0.81; 6-9 was so easy that the model ignored the cue), 8 similar
  shapes; ``background`` gets 400 training images per class by default, ``patch`` 250
  (``DEFAULT_PER_CLASS``): background's shapes need the extra steps, while with 400 the
  patch's shapes beat the patch;
- ``bias`` defaults to 1.0: with no misaligned image nothing in the training data argues
  against the shortcut, so fine-tuning on the same data without masks cannot unlearn it (at
  0.95 the misaligned 5% slowly teach it away, which made plain fine-tuning look like a cure).

``digits`` (not calibrated yet) defaults to all 10 classes and 100 training, 30 val and 40
test images per class, drawn from disjoint pools of the 1,797 digits.

The true spurious pixels of every training image (where the feature is, or would be for a
neutral image) go to ``oracle_masks/train/<class>/<stem>.png``; ``spurious.json`` maps each
training image to "aligned", "misaligned" or "none"; ``groups.json`` gives every image of every
split its cue (``{split: {relpath: cue}}``: the class folder name whose colour the feature
shows, null without a feature), from which evaluation scores worst-group and bias-conflicting
accuracy (``data/groups.py``). Everything is deterministic given the seed: each image draws
from its own generator seeded by (seed, split, index); ``digits``' pools by (seed, label).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from robustar_ls.config import SyntheticConfig, to_dict
from robustar_ls.data.digits import (
    DEFAULT_COUNTS,
    DIGIT_CLASSES,
    DIGIT_PALETTE,
    DigitSpec,
    check_counts,
    digit_pool,
    draw_digit_spec,
    render_digit,
)
from robustar_ls.data.groups import GROUPS_FILE
from robustar_ls.data.masks import MaskStore

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring", "bar", "star")
PALETTE = np.array(
    [
        (0.90, 0.10, 0.10),  # red
        (0.10, 0.75, 0.15),  # green
        (0.15, 0.25, 0.95),  # blue
        (0.95, 0.85, 0.10),  # yellow
        (0.85, 0.15, 0.85),  # magenta
        (0.10, 0.85, 0.85),  # cyan
        (0.95, 0.50, 0.05),  # orange
        (0.50, 0.20, 0.65),  # purple
    ]
)
KINDS = ("patch", "background", "digits")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
NOISE_SIGMA = 0.1
NEUTRAL_GREY = 0.5
PATCH_DIVISOR = 3  # patch side = size // 3: 10 px at 32 px (was size // 4, then // 8)
PATCH_NOISE = 0.0  # the patch is its class's colour exactly: a clean cue from epoch 1
RADIUS_MIN = 5.0  # 4 px objects took too long to learn; 6 px ones beat the cue
RADIUS_MAX = 9.0
TINT_BASE = 0.42  # near the neutral grey: dark and bright objects both stand out
TINT_SCALE = 0.3  # 0.16 lost to the shapes once they were learned
# training images per class when --per-class is not given: background's shapes need more steps
# (250 left val at 0.62-0.85 on some seeds), patch's more images teach the shapes so well that
# they beat the patch (400: val - test 0.20-0.25)
DEFAULT_PER_CLASS = {"patch": 250, "background": 400, "digits": DEFAULT_COUNTS["train"]}
DEFAULT_VAL_PER_CLASS = {"patch": 100, "background": 100, "digits": DEFAULT_COUNTS["val"]}
DEFAULT_TEST_PER_CLASS = {"patch": 100, "background": 100, "digits": DEFAULT_COUNTS["test"]}
DEFAULT_CLASSES = {"patch": 4, "background": 4, "digits": len(DIGIT_CLASSES)}


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image; ``feature`` is the spurious colour's class."""

    kind: str
    size: int
    label: int
    center: tuple[float, float]
    radius: float
    angle: float
    colour: tuple[float, float, float]
    corner: int  # 0..3, where a patch sits
    noise_seed: int
    feature: int | None  # None = neutral (no spurious feature)


def shape_mask(shape: str, size: int, center, radius: float, angle: float) -> np.ndarray:
    """Boolean (size, size) mask of a shape, rotated by ``angle`` radians. No anti-aliasing."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xs - center[0], ys - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius
    r = np.hypot(u, v)
    if shape == "circle":
        return r <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "triangle":
        return (v <= 0.6) & (v >= 1.8 * np.abs(u) - 1.0)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if shape == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.35)
    if shape == "star":
        theta = np.arctan2(v, u)
        return r <= 0.55 + 0.45 * np.cos(5 * theta) ** 2
    raise ValueError(f"unknown shape {shape!r}")


def patch_size(size: int) -> int:
    return max(2, int(size // PATCH_DIVISOR))


def patch_mask(size: int, corner: int) -> np.ndarray:
    """Boolean mask of the corner patch (offset 1 px from the border)."""
    p, mask = patch_size(size), np.zeros((size, size), dtype=bool)
    y0 = 1 if corner in (0, 1) else size - 1 - p
    x0 = 1 if corner in (0, 2) else size - 1 - p
    mask[y0 : y0 + p, x0 : x0 + p] = True
    return mask


def render(spec: ImageSpec | DigitSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render an image (uint8 HxWx3) and its spurious-pixel mask (bool HxW)."""
    if isinstance(spec, DigitSpec):
        return render_digit(spec)
    size = spec.size
    obj = shape_mask(SHAPES[spec.label], size, spec.center, spec.radius, spec.angle)
    canvas = np.full((size, size, 3), NEUTRAL_GREY)
    region = patch_mask(size, spec.corner) if spec.kind == "patch" else ~obj
    if spec.feature is not None:
        colour = PALETTE[spec.feature]
        if spec.kind == "background":
            # a subtle tint, near the neutral grey: dark and bright objects both stand out
            colour = TINT_BASE + TINT_SCALE * colour
        canvas[region] = colour
    canvas[obj] = spec.colour  # a large object may cover a corner of the patch (kept in the mask)
    noise = np.random.default_rng(spec.noise_seed).normal(0.0, NOISE_SIGMA, canvas.shape)
    if spec.kind == "patch" and spec.feature is not None:
        noise[region] *= PATCH_NOISE
    image = np.clip(canvas + noise, 0.0, 1.0)
    return (image * 255 + 0.5).astype(np.uint8), region


def draw_spec(kind: str, size: int, label: int, rng: np.random.Generator) -> ImageSpec:
    """A random object of class ``label`` (no feature yet), kept clear of the patch corners."""
    scale = size / 32
    radius = rng.uniform(RADIUS_MIN, RADIUS_MAX) * scale
    margin = patch_size(size) + 1 + radius * 0.8
    low, high = margin, size - margin
    center = tuple(rng.uniform(low, high, 2)) if high > low else (size / 2, size / 2)
    base = rng.uniform(0.0, 0.2) if rng.random() < 0.5 else rng.uniform(0.8, 1.0)
    colour = tuple(np.clip(base + rng.uniform(-0.1, 0.1, 3), 0.0, 1.0))
    return ImageSpec(
        kind=kind,
        size=size,
        label=label,
        center=(float(center[0]), float(center[1])),
        radius=float(radius),
        angle=float(rng.uniform(0, 2 * np.pi)),
        colour=tuple(float(c) for c in colour),
        corner=int(rng.integers(4)),
        noise_seed=int(rng.integers(2**31)),
        feature=None,
    )


def assign_feature(
    spec: ImageSpec | DigitSpec, split: str, cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[ImageSpec | DigitSpec, str]:
    """Choose the spurious feature of an image; returns the spec and its status."""
    k = cfg.classes
    if split == "test":
        return replace(spec, feature=int(rng.integers(k))), "ood"
    if rng.random() >= cfg.spurious_fraction:
        return spec, "none"
    if rng.random() < cfg.bias:
        return replace(spec, feature=spec.label), "aligned"
    others = [c for c in range(k) if c != spec.label]
    return replace(spec, feature=int(rng.choice(others))), "misaligned"


def class_names(kind: str, classes: int) -> list[str]:
    """The class folder names of a kind: shape names, or "0".."9" for ``digits``."""
    names = DIGIT_CLASSES if kind == "digits" else SHAPES
    return list(names[:classes])


def palette(kind: str) -> np.ndarray:
    """The feature colours of a kind, one RGB row in [0, 1] per class."""
    if kind == "digits":
        return DIGIT_PALETTE
    return PALETTE


def _object_spec(cfg: SyntheticConfig, label: int, i: int, rng, pools) -> ImageSpec | DigitSpec:
    """The object of image ``i`` of class ``label``: a shape, or the class's ``i``-th digit."""
    if cfg.kind != "digits":
        return draw_spec(cfg.kind, cfg.size, label, rng)
    return draw_digit_spec(cfg.size, label, pools[label][i], rng)


def _digit_pools(split: str, count_per_class: int, cfg: SyntheticConfig) -> list[list[int]]:
    """Per class, the digits of ``split`` (disjoint from the other splits' pools)."""
    cfg = resolve(cfg)
    counts = {"train": cfg.per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
    counts[split] = count_per_class
    check_counts(cfg.classes, counts["train"], counts["val"], counts["test"])
    return [
        digit_pool(cfg.seed, label, split, count_per_class, counts["train"])
        for label in range(cfg.classes)
    ]


def image_specs(split: str, count_per_class: int, cfg: SyntheticConfig):
    """Yield (relpath, spec, status) for one split, deterministically."""
    cfg = resolve(cfg)
    names = class_names(cfg.kind, cfg.classes)
    pools = _digit_pools(split, count_per_class, cfg) if cfg.kind == "digits" else None
    for label in range(cfg.classes):
        for i in range(count_per_class):
            index = label * count_per_class + i
            rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], index])
            spec = _object_spec(cfg, label, i, rng, pools)
            spec, status = assign_feature(spec, split, cfg, rng)
            yield f"{names[label]}/{index:05d}.png", spec, status


def resolve(cfg: SyntheticConfig) -> SyntheticConfig:
    """``cfg`` with the kind's defaults filled in: images per class (train, val, test) and
    the number of classes."""
    if cfg.kind not in KINDS:
        raise ValueError(f"unknown dataset kind {cfg.kind!r}; choose one of {', '.join(KINDS)}")
    defaults = {
        "per_class": DEFAULT_PER_CLASS[cfg.kind],
        "val_per_class": DEFAULT_VAL_PER_CLASS[cfg.kind],
        "test_per_class": DEFAULT_TEST_PER_CLASS[cfg.kind],
        "classes": DEFAULT_CLASSES[cfg.kind],
    }
    missing = {name: n for name, n in defaults.items() if getattr(cfg, name) is None}
    return replace(cfg, **missing) if missing else cfg


def validate(cfg: SyntheticConfig) -> None:
    most = len(DIGIT_CLASSES) if cfg.kind == "digits" else len(SHAPES)
    if not 2 <= cfg.classes <= most:
        raise ValueError(
            f"--classes must be between 2 and {most} for --kind {cfg.kind}, got {cfg.classes}"
        )
    if cfg.size < 16:
        raise ValueError(f"--size must be at least 16 px, got {cfg.size}")
    for name in ("bias", "spurious_fraction"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be within [0, 1]")
    if cfg.per_class < 1:
        raise ValueError("--per-class must be at least 1")
    for name in ("val_per_class", "test_per_class"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 0")
    if cfg.kind == "digits":
        check_counts(cfg.classes, cfg.per_class, cfg.val_per_class, cfg.test_per_class)


def make_dataset(out: str | Path, cfg: SyntheticConfig, progress: Iterable | None = None) -> dict:
    """Write the dataset to ``out``; returns a summary. ``progress`` wraps the image iterator."""
    cfg = resolve(cfg)
    validate(cfg)
    out = Path(out)
    oracle = MaskStore(out / "oracle_masks")
    manifest: dict[str, str] = {}
    counts = {"train": cfg.per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
    names = class_names(cfg.kind, cfg.classes)
    groups: dict[str, dict[str, str | None]] = {split: {} for split, n in counts.items() if n}
    jobs = [
        (split, rel, spec, status)
        for split, n in counts.items()
        if n > 0
        for rel, spec, status in image_specs(split, n, cfg)
    ]
    for split, rel, spec, status in progress(jobs) if progress else jobs:
        image, spurious = render(spec)
        path = out / split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        groups[split][rel] = None if spec.feature is None else names[spec.feature]
        if split == "train":
            oracle.write(rel, spurious)
            manifest[rel] = status
    (out / "spurious.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    (out / GROUPS_FILE).write_text(json.dumps(groups, indent=1, sort_keys=True))
    summary = {
        "config": to_dict(cfg),
        "classes": names,
        "images": {split: n * cfg.classes for split, n in counts.items() if n > 0},
        "train_status": {
            s: sum(v == s for v in manifest.values()) for s in ("aligned", "misaligned", "none")
        },
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=1))
    return summary


def counts_text(counts: dict[str, int]) -> str:
    """``{"train": 800, "val": 200}`` as text: "800 train, 200 val" (``make_dataset``'s
    ``images`` and ``train_status`` counts)."""
    return ", ".join(f"{n} {name}" for name, n in counts.items())
