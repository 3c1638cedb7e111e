"""The mask store: one PNG per annotated training image, 255 = spurious, mirroring ``train/``.

Layout: ``<root>/train/<class>/<stem>.png`` plus ``<root>/manifest.json``, which records for each
image the Label Studio task id, annotation id and ``updated_at`` the mask came from, so syncing
again is idempotent. Synthetic datasets write their true masks in the same layout under
``oracle_masks/``, so either folder can feed paired training.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from robustar_ls.errors import RobustarError
from robustar_ls.files import atomic_write_bytes

DEFAULT_FOLDER = "masks"  # <data>/masks: where a sync writes, what training reads


def masks_root(data_root: str | Path, masks: str | Path | None = None) -> Path:
    """The mask store of the dataset at ``data_root``: ``masks`` when given, else
    ``<data_root>/masks`` (the one place that default is decided)."""
    return Path(masks) if masks else Path(data_root) / DEFAULT_FOLDER


class MaskError(RobustarError, ValueError):
    """A mask is missing, unreadable or of the wrong size."""


def read_mask_png(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask PNG as a bool array (H, W), pixels >= 128 spurious; ``size`` = (w, h) it must have."""
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) >= 128
    except FileNotFoundError:
        raise MaskError(f"mask {path} does not exist") from None
    except OSError as err:
        raise MaskError(f"mask {path} is unreadable: {err}") from err
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        raise MaskError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, its image is "
            f"{size[0]}x{size[1]}; masks must have the image's size"
        )
    return mask


class MaskStore:
    """Spurious-pixel masks of one dataset's training split."""

    MANIFEST = "manifest.json"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, relpath: str) -> Path:
        """Mask file of the training image ``<class>/<file>`` (relative to ``train/``)."""
        rel = PurePosixPath(relpath)
        if rel.is_absolute() or ".." in rel.parts:
            raise MaskError(f"mask path {relpath!r} must stay inside the store")
        return self.root / "train" / rel.with_suffix(".png")

    def has(self, relpath: str) -> bool:
        return self.path_for(relpath).is_file()

    def read(self, relpath: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """The mask as a bool array (H, W); ``size`` = (width, height) it must have."""
        path = self.path_for(relpath)
        if not path.exists():
            raise MaskError(f"no mask for {relpath} at {path}")
        return read_mask_png(path, size)

    def write(self, relpath: str, mask: np.ndarray) -> Path:
        """Store a mask (bool or 0/255) atomically as an 8-bit PNG."""
        array = np.asarray(mask)
        if array.ndim != 2:
            raise MaskError(f"mask for {relpath} must be 2-D, got shape {array.shape}")
        array = (
            np.where(array.astype(bool), 255, 0).astype(np.uint8)
            if array.dtype == bool
            else (np.where(array >= 128, 255, 0).astype(np.uint8))
        )
        buffer = io.BytesIO()
        Image.fromarray(array, mode="L").save(buffer, format="PNG")
        path = self.path_for(relpath)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def delete(self, relpath: str) -> bool:
        path = self.path_for(relpath)
        if path.is_file():
            path.unlink()
            return True
        return False

    def relpaths(self) -> Iterator[str]:
        """Every stored mask, as ``<class>/<stem>.png`` relative to ``train/``."""
        base = self.root / "train"
        if base.is_dir():
            for path in sorted(base.rglob("*.png")):
                yield path.relative_to(base).as_posix()

    def match(self, image_relpaths: list[str]) -> dict[str, Path]:
        """Map each training image that has a mask to its mask path (stems are matched)."""
        found = {}
        for rel in image_relpaths:
            path = self.path_for(rel)
            if path.is_file():
                found[rel] = path
        return found

    def read_manifest(self) -> dict[str, Any]:
        path = self.root / self.MANIFEST
        if not path.is_file():
            return {}
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MaskError(f"mask manifest {path} is corrupt: {err}; delete it to resync") from err
        if not isinstance(manifest, dict) or not all(
            isinstance(entry, dict) for entry in manifest.values()
        ):
            raise MaskError(
                f"mask manifest {path} is not a JSON object of mask records "
                f"(found {type(manifest).__name__}); delete it to resync"
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.root / self.MANIFEST, data)
