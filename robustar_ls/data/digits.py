"""Real handwritten digits as the object: ``make-dataset --kind digits``.

The objects are scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``:
1,797 real 8x8 grey images of 10 classes, shipped inside the wheel, no download), upscaled
bicubically to 3/4 of the image side, shifted by up to 2 px (at 32 px) and drawn light on the
background; the spurious feature is the background colour, as in Biased-MNIST (Bahng et al.
2020, "Learning de-biased representations with biased representations"): a coloured
background in the colour of ``DIGIT_PALETTE[class]`` (aligned), of another class (misaligned),
or black (no feature). Every pixel not in the stroke (the upscaled digit's intensity at most
``STROKE_THRESHOLD``) is background, so the oracle mask is the background and a different
feature changes those pixels only. Mild pixel noise (σ ``NOISE_SIGMA``) over the whole image.

The digits of each class are shuffled by the seed and split into disjoint pools: train takes
the first ``per_class``, val the next ``val_per_class``, test the last ``test_per_class``; no
digit image appears in two splits. The class with the fewest digits (8, 174 images) bounds
``per_class + val_per_class + test_per_class``; the defaults are 100 + 30 + 40.

scikit-learn is optional (``pip install "robustar-ls[digits]"``) and imported only here, when
a digits dataset is made.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from robustar_ls.errors import RobustarError

# Biased-MNIST's background colours (Bahng et al. 2020, ReBias), one per digit class
DIGIT_PALETTE = (
    np.array(
        [
            (255, 0, 0),
            (0, 255, 0),
            (0, 0, 255),
            (225, 225, 0),
            (225, 0, 225),
            (0, 255, 255),
            (255, 128, 0),
            (255, 0, 128),
            (128, 0, 255),
            (128, 128, 128),
        ],
        dtype=np.float64,
    )
    / 255.0
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))  # class folder names "0".."9"
DEFAULT_COUNTS = {"train": 100, "val": 30, "test": 40}  # per class; 170 of the fewest, 174
INNER = 0.75  # the digit's side, as a share of the image side (24 px at 32 px)
SHIFT = 2  # the largest shift in each direction, in px at 32 px
STROKE_THRESHOLD = 0.35  # upscaled intensity above it: stroke; at or below: background
STROKE_BASE = 0.7  # stroke brightness = STROKE_BASE + (1 - STROKE_BASE) x intensity
NOISE_SIGMA = 0.05
POOL_STREAM = 101  # the pools' generator: (seed, POOL_STREAM, label), apart from the images'


class MissingDependencyError(RobustarError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


@functools.lru_cache(maxsize=1)
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``(images float (1797, 8, 8) in [0, 1], labels int (1797,))``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise MissingDependencyError(
            "--kind digits needs scikit-learn (its bundled handwritten digits): "
            'pip install "robustar-ls[digits]" (or pip install scikit-learn)'
        ) from err
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0
    return images, np.asarray(bunch.target, dtype=np.int64)


@dataclass(frozen=True)
class DigitSpec:
    """Everything needed to render one digit image; ``feature`` is the background's class."""

    kind: str  # "digits"
    size: int
    label: int
    digit: int  # index into load_digit_images()
    shift: tuple[int, int]  # (dx, dy) in px
    noise_seed: int
    feature: int | None  # None = neutral (black background)


def pool_limit(classes: int) -> tuple[int, int]:
    """``(fewest digits of a class among the first ``classes``, that class)``."""
    _, labels = load_digit_images()
    counts = np.bincount(labels, minlength=10)[:classes]
    label = int(np.argmin(counts))
    return int(counts[label]), label


def check_counts(classes: int, train: int, val: int, test: int) -> None:
    """ValueError when the per-class counts ask for more digits than a class holds."""
    available, label = pool_limit(classes)
    need = train + val + test
    if need <= available:
        return
    room = available - val - test
    hint = (
        f"with these val/test counts --per-class can be at most {room}"
        if room >= 1
        else "lower --val-per-class / --test-per-class"
    )
    raise ValueError(
        f"--kind digits has {available} images of digit {DIGIT_CLASSES[label]!r} (the fewest "
        f"of its {classes} classes), but --per-class {train} + --val-per-class {val} + "
        f"--test-per-class {test} = {need} per class; at most {available} in all ({hint})"
    )


def digit_pool(seed: int, label: int, split: str, count: int, train: int) -> list[int]:
    """The digit indices of class ``label`` for ``split``: the class's digits shuffled by
    ``seed``; train the first ``train``, val the ``count`` after them, test the last
    ``count`` (disjoint while ``check_counts`` holds)."""
    _, labels = load_digit_images()
    order = np.random.default_rng([seed, POOL_STREAM, label]).permutation(
        np.flatnonzero(labels == label)
    )
    if split == "train":
        chosen = order[:count]
    elif split == "val":
        chosen = order[train : train + count]
    else:
        chosen = order[len(order) - count :] if count else order[:0]
    return [int(i) for i in chosen]


def draw_digit_spec(size: int, label: int, digit: int, rng: np.random.Generator) -> DigitSpec:
    """A digit image of class ``label`` (no feature yet): its shift and noise."""
    reach = max(1, int(round(SHIFT * size / 32)))
    dx, dy = (int(v) for v in rng.integers(-reach, reach + 1, 2))
    return DigitSpec(
        kind="digits",
        size=size,
        label=label,
        digit=digit,
        shift=(dx, dy),
        noise_seed=int(rng.integers(2**31)),
        feature=None,
    )


def digit_intensity(spec: DigitSpec) -> np.ndarray:
    """The digit upscaled to 3/4 of the side and placed (shifted) on a size x size canvas."""
    images, _ = load_digit_images()
    size = spec.size
    inner = max(8, int(round(size * INNER)))
    glyph = Image.fromarray((images[spec.digit] * 255 + 0.5).astype(np.uint8), mode="L")
    glyph = glyph.resize((inner, inner), Image.Resampling.BICUBIC)
    canvas = np.zeros((size, size))
    offset = (size - inner) // 2
    x0 = int(np.clip(offset + spec.shift[0], 0, size - inner))
    y0 = int(np.clip(offset + spec.shift[1], 0, size - inner))
    canvas[y0 : y0 + inner, x0 : x0 + inner] = np.asarray(glyph, dtype=np.float64) / 255.0
    return canvas


def render_digit(spec: DigitSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render a digit image (uint8 HxWx3) and its spurious-pixel mask (bool HxW: background)."""
    intensity = digit_intensity(spec)
    stroke = intensity > STROKE_THRESHOLD
    canvas = np.zeros((spec.size, spec.size, 3))  # black: no feature
    if spec.feature is not None:
        canvas[~stroke] = DIGIT_PALETTE[spec.feature]
    canvas[stroke] = (STROKE_BASE + (1 - STROKE_BASE) * intensity[stroke])[:, None]
    noise = np.random.default_rng(spec.noise_seed).normal(0.0, NOISE_SIGMA, canvas.shape)
    image = np.clip(canvas + noise, 0.0, 1.0)
    return (image * 255 + 0.5).astype(np.uint8), ~stroke
