"""Robust image loading: EXIF rotation, any mode → RGB, bombs and corrupt files → clear errors."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from robustar_ls.errors import RobustarError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # larger images are refused (decompression bombs)


class ImageLoadError(RobustarError, ValueError):
    """An image cannot be read; the message names it and says why."""


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def displayed_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as the image is shown and trained on (EXIF rotation applied), read
    from the header without decoding the pixels. Masks must have this size."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError) as err:
        raise ImageLoadError(f"{path} is not a readable image: {err}") from err
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert grayscale / RGBA / palette / CMYK to RGB.

    Transparent pixels are composited over white, so an RGBA cut-out does not turn black.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


@contextmanager
def decode_errors(name: str, too_large: type[ImageLoadError] = ImageLoadError) -> Iterator[None]:
    """Turn PIL's failures inside the block into one-line :class:`ImageLoadError` s naming
    ``name``: a decompression bomb (raised as ``too_large``), an unknown format, a corrupt or
    truncated file. PIL's bomb *warning* is raised as an error too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise too_large(f"{name} is too large to decode safely: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{name} is not an image file PIL can read") from err
    except OSError as err:
        raise ImageLoadError(f"{name} is corrupt or truncated: {err}") from err


def _open(source: io.BytesIO | Path, name: str, max_pixels: int) -> Image.Image:
    with decode_errors(name):
        image = Image.open(source)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageLoadError(
                f"{name} is {width}x{height} pixels, over the limit of {max_pixels}; "
                "resize it or raise the limit"
            )
        image.load()
    return to_rgb(image)


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file as RGB, or raise :class:`ImageLoadError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image {path} does not exist")
    return _open(path, str(path), max_pixels)


def decode_rgb(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode image bytes (e.g. downloaded from Label Studio) as RGB."""
    return _open(io.BytesIO(data), name, max_pixels)
