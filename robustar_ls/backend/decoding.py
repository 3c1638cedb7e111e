"""Decoding task images within limits, at reduced size when the models need less.

:class:`ImageLimits` are one image's limits. Its bytes are counted while the fetcher reads or
downloads it (:mod:`robustar_ls.backend.images`); the others are checked on the image header,
before any pixel is decoded: both sides, the
aspect ratio, the pixel count, and (for one ``/predict`` request) a total pixel budget shared
by its images. Large images are decoded at reduced size: JPEG through ``Image.draft`` (the
decoder's own 1/2, 1/4, 1/8 scaling), others with ``Image.reduce`` right after decoding, so
the models and the masks' computation work on at most ``working_side`` pixels per side. The
image's displayed size (EXIF rotation applied) is returned too: Label Studio's regions are
drawn at that size.
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass

from PIL import Image

from robustar_ls.data.images import ImageLoadError, decode_errors, to_rgb

_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageTooLarge(ImageLoadError):
    """An image over one of the limits (answered 413)."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 64 * 1024 * 1024  # the file or download
    max_pixels: int = 40_000_000  # per image
    max_side: int = 12_000  # pixels, either side
    max_aspect: float = 20.0  # long side / short side
    working_side: int = 2048  # larger images are decoded/reduced to about this long side


class PixelBudget:
    """The pixels one request may still decode, shared by its parallel fetches."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._left = total
        self._lock = threading.Lock()

    def take(self, pixels: int) -> bool:
        with self._lock:
            if pixels > self._left:
                return False
            self._left -= pixels
            return True


def check_limits(name: str, width: int, height: int, limits: ImageLimits) -> None:
    """Raise :class:`ImageTooLarge` when a ``width`` x ``height`` image is over a limit."""
    size = f"{name} is {width}x{height} pixels"
    if width < 1 or height < 1:
        raise ImageLoadError(f"{size}: empty")
    if max(width, height) > limits.max_side:
        raise ImageTooLarge(f"{size}, over the limit of {limits.max_side} pixels per side")
    if max(width, height) / min(width, height) > limits.max_aspect:
        raise ImageTooLarge(f"{size}, an aspect ratio over the limit of {limits.max_aspect:g}")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"{size}, over the limit of {limits.max_pixels} pixels")


def decode_limited(
    data: bytes, name: str, limits: ImageLimits, budget: PixelBudget | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """``(RGB image, at most about working_side per side; displayed (width, height))``."""
    with decode_errors(name, too_large=ImageTooLarge):
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        check_limits(name, width, height, limits)
        if budget is not None and not budget.take(width * height):
            raise ImageTooLarge(
                f"{name} ({width}x{height} pixels) is over what is left of the request's "
                f"budget of {budget.total} pixels; send fewer or smaller images per request"
            )
        rotated = image.getexif().get(0x0112, 1) in _ROTATED
        scale = limits.working_side / max(width, height)
        if image.format == "JPEG" and scale < 1:
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
    image = to_rgb(image)
    factor = math.ceil(max(image.size) / limits.working_side)
    if factor > 1:
        image = image.reduce(factor)
    return image, ((height, width) if rotated else (width, height))
