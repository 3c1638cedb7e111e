"""Which annotation of a task counts, its "Spurious" regions as one mask, and its image.

The rule (see :mod:`robustar_ls.labelstudio.sync`): cancelled annotations are ignored; of the
finished ones the most recently updated wins (largest ``updated_at``, then largest id); its
regions on the brush tag labelled "Spurious" are OR-ed into one mask, a pixel counting when
its brush alpha is at least :data:`ALPHA_THRESHOLD`.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from robustar_ls.labels import SPURIOUS_LABEL
from robustar_ls.labelstudio.brush import rle_to_mask

ALPHA_THRESHOLD = 128


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if not value:
        return datetime.min
    text = str(value).replace("Z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return datetime.min
    # compare naive and aware stamps alike: Label Studio writes one format per server
    return (
        stamp.replace(tzinfo=None)
        if stamp.tzinfo is None
        else stamp.astimezone().replace(tzinfo=None)
    )


def stamp_text(value: Any) -> str:
    """``updated_at`` as a stable string for the manifest."""
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else str(value)


def choose_annotation(annotations: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The annotation that counts for a task (see the module docstring), or None."""
    finished = [a for a in annotations if not a.get("was_cancelled")]
    if not finished:
        return None
    return max(finished, key=lambda a: (_timestamp(a.get("updated_at")), int(a.get("id") or 0)))


def spurious_regions(
    result: Iterable[Mapping[str, Any]], brush_name: str, label: str = SPURIOUS_LABEL
) -> list[Mapping[str, Any]]:
    """The brush regions of ``result`` labelled ``label`` on the brush tag ``brush_name``."""
    regions = []
    for region in result or []:
        if region.get("from_name") != brush_name:
            continue
        value = region.get("value") or {}
        if label not in (value.get("brushlabels") or []):
            continue
        regions.append(region)
    return regions


def decode_regions(regions: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """OR of the regions' RLE masks → bool (H, W). Raises ValueError on bad or mixed sizes."""

    combined: np.ndarray | None = None
    for region in regions:
        value = region.get("value") or {}
        rle = value.get("rle")
        if value.get("format", "rle") != "rle" or not rle:
            raise ValueError(
                f"region {region.get('id')!r} is not an RLE brush mask "
                f"(format {value.get('format')!r})"
            )
        height, width = region.get("original_height"), region.get("original_width")
        if not height or not width:
            raise ValueError(f"region {region.get('id')!r} has no original_width/original_height")
        mask = np.asarray(rle_to_mask(rle, int(height), int(width))) >= ALPHA_THRESHOLD
        if combined is None:
            combined = mask
        elif combined.shape != mask.shape:
            raise ValueError(
                f"regions of one annotation have different sizes: {combined.shape[1]}x"
                f"{combined.shape[0]} and {mask.shape[1]}x{mask.shape[0]}"
            )
        else:
            combined |= mask
    if combined is None:
        raise ValueError("no regions to decode")
    return combined


def _path_of_url(url: str) -> str:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    if "d" in query:
        return unquote(query["d"][0])
    return unquote(parsed.path)


def relpath_of_task(data: Mapping[str, Any], image_key: str, train: Container[str]) -> str | None:
    """The training relpath a task shows (see the module docstring), or None."""
    rel = data.get("relpath")
    if isinstance(rel, str) and rel in train:
        return rel
    url = data.get(image_key)
    if not isinstance(url, str) or not url:
        return None
    parts = PurePosixPath(_path_of_url(url).replace("\\", "/")).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "train":
            candidate = "/".join(parts[i + 1 :])
            if candidate in train:
                return candidate
    return None
