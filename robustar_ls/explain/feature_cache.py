"""On-disk cache of projected train-side gradient features, one folder per model version.

Layout under ``root`` (by default ``<data>/.robustar/influence``)::

    <model_version>/meta.json            what the features were computed with (written last)
    <model_version>/train_features.npy   (n, k) float16 or float32, memory-mapped
    <model_version>/row_scales.npy       (n,) float32: row i is features[i] * row_scales[i]
    <model_version>/gram.npy             (k, k) float64: sum_i phi_i phi_i^T
    <model_version>/feature_sum.npy      (k,) float64: sum_i phi_i
    <model_version>/shards/              only while a torchrun run featurizes (feature_shards)

Features are written in batches through :class:`FeatureWriter` (bounded memory for any n); the
arrays are written under temporary names, renamed when complete, and ``meta.json`` is written
last and atomically, so a crash leaves a folder that :meth:`FeatureCache.load` ignores. A
cached folder is used only when its ``meta.json`` equals the requested description (layers, k,
projection, seed, train images, ...); anything else recomputes it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustar_ls.errors import RobustarError
from robustar_ls.files import atomic_write_bytes

log = logging.getLogger(__name__)

FLOAT16_TARGET = 1024.0  # rows are scaled so their largest |value| is this (float16 max 65504)
FILES = ("train_features.npy", "row_scales.npy", "gram.npy", "feature_sum.npy")


class FeatureCacheError(RobustarError, RuntimeError):
    """The cache folder cannot be written; the message says where."""


@dataclass
class TrainFeatures:
    """Projected train-side features (memory-mapped) and their sufficient statistics."""

    features: np.ndarray  # (n, k), float16 or float32, usually a read-only memmap
    row_scales: np.ndarray  # (n,) float32
    gram: np.ndarray  # (k, k) float64
    feature_sum: np.ndarray  # (k,) float64
    meta: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def k(self) -> int:
        return int(self.features.shape[1])

    @classmethod
    def from_array(cls, features: np.ndarray, meta: dict[str, Any] | None = None) -> TrainFeatures:
        """In-memory features (tests, benchmarks): statistics computed here."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        return cls(
            features=features,
            row_scales=np.ones(features.shape[0], dtype=np.float32),
            gram=gram_of(features),
            feature_sum=features.sum(axis=0, dtype=np.float64),
            meta=dict(meta or {}),
        )

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as float32, scales applied."""
        block = np.asarray(self.features[start:stop], dtype=np.float32)
        return block * self.row_scales[start:stop, None]


def gram_of(block: np.ndarray) -> np.ndarray:
    """``block^T block`` as float64 (float32 product per block: 2x faster, error ~1e-7)."""
    rows = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
    return (rows.T @ rows).double().numpy()


def quantize(block: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(stored, row_scales, values)``: rows as the cache stores them in ``dtype`` (float16:
    each row scaled so its largest ``|value|`` is :data:`FLOAT16_TARGET`), and the float32
    values they stand for (``stored * row_scales``), of which the statistics are taken."""
    block = np.asarray(block, dtype=np.float32)
    if dtype != "float16":
        return block, np.ones(block.shape[0], dtype=np.float32), block
    peak = np.abs(block).max(axis=1) if block.size else np.zeros(block.shape[0], np.float32)
    scales = np.where(peak > 0, peak / FLOAT16_TARGET, 1.0).astype(np.float32)
    stored = (block / scales[:, None]).astype(np.float16)
    return stored, scales, stored.astype(np.float32) * scales[:, None]


class FeatureWriter:
    """Fill a cache folder batch by batch; :meth:`finish` publishes it."""

    def __init__(self, folder: Path, n: int, k: int, dtype: str, meta: dict[str, Any]) -> None:
        if dtype not in ("float16", "float32"):
            raise FeatureCacheError(f"feature dtype must be float16 or float32, got {dtype!r}")
        self.folder = folder
        self.n, self.k, self.dtype, self.meta = n, k, dtype, dict(meta)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FeatureCacheError(
                f"cannot create the influence cache folder {folder}: {err.strerror}; "
                "make the dataset folder writable or pass another cache folder"
            ) from err
        (folder / "meta.json").unlink(missing_ok=True)  # the old description no longer holds
        # a name of its own: two processes may compute the same version at once
        self._tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._features = np.lib.format.open_memmap(
            folder / f"train_features.{self._tag}.tmp.npy", mode="w+", dtype=dtype, shape=(n, k)
        )
        self._scales = np.ones(n, dtype=np.float32)
        self._gram = np.zeros((k, k), dtype=np.float64)
        self._sum = np.zeros(k, dtype=np.float64)
        self._filled = 0

    def write(self, start: int, block: np.ndarray) -> None:
        """Rows ``[start, start + len(block))`` (float32, unscaled)."""
        stored, scales, values = quantize(block, self.dtype)
        self.put(start, stored, scales)
        self.add_stats(values)

    def put(self, start: int, stored: np.ndarray, scales: np.ndarray) -> None:
        """Rows already quantized by :func:`quantize` (statistics not updated)."""
        stop = start + stored.shape[0]
        self._features[start:stop] = stored
        self._scales[start:stop] = scales
        self._filled += stored.shape[0]

    def add_stats(self, values: np.ndarray) -> None:
        """Add rows (as stored, scales applied) to the Gram matrix and the feature sum."""
        self._gram += gram_of(values)
        self._sum += values.sum(axis=0, dtype=np.float64)

    def set_stats(self, gram: np.ndarray, feature_sum: np.ndarray) -> None:
        """The statistics of every row, computed elsewhere (e.g. reduced over processes)."""
        self._gram = np.asarray(gram, dtype=np.float64).reshape(self.k, self.k)
        self._sum = np.asarray(feature_sum, dtype=np.float64).reshape(self.k)

    def finish(self) -> TrainFeatures:
        if self._filled != self.n:
            raise FeatureCacheError(f"wrote {self._filled} of {self.n} feature rows")
        self._features.flush()
        del self._features
        folder = self.folder
        os.replace(folder / f"train_features.{self._tag}.tmp.npy", folder / "train_features.npy")
        for name, array in (
            ("row_scales.npy", self._scales),
            ("gram.npy", self._gram),
            ("feature_sum.npy", self._sum),
        ):
            np.save(folder / f"{name}.{self._tag}.tmp.npy", array)
            os.replace(folder / f"{name}.{self._tag}.tmp.npy", folder / name)
        atomic_write_bytes(folder / "meta.json", json.dumps(self.meta, indent=1).encode())
        return _open(folder, self.meta)


def _open(folder: Path, meta: dict[str, Any]) -> TrainFeatures:
    return TrainFeatures(
        features=np.load(folder / "train_features.npy", mmap_mode="r"),
        row_scales=np.load(folder / "row_scales.npy"),
        gram=np.load(folder / "gram.npy"),
        feature_sum=np.load(folder / "feature_sum.npy"),
        meta=meta,
    )


class FeatureCache:
    """Train-side features per model version under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, model_version: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_version)
        return self.root / safe

    def load(self, model_version: str, meta: dict[str, Any]) -> TrainFeatures | None:
        """The cached features when their description equals ``meta``, else None."""
        folder = self.folder(model_version)
        try:
            stored = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as err:
            log.warning("ignoring unreadable influence cache %s: %s", folder, err)
            return None
        if stored != json.loads(json.dumps(meta)):
            changed = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
            log.info("influence cache %s is stale (changed: %s); recomputing", folder, changed)
            return None
        if not all((folder / name).is_file() for name in FILES):
            return None
        log.info("using cached train features from %s", folder)
        return _open(folder, stored)

    def writer(
        self, model_version: str, n: int, k: int, dtype: str, meta: dict[str, Any]
    ) -> FeatureWriter:
        return FeatureWriter(self.folder(model_version), n, k, dtype, meta)

    def prune(self, keep: int, current: str) -> list[Path]:
        """Remove all but the ``keep`` most recent version folders (never ``current``)."""
        if not self.root.is_dir():
            return []
        folders = [p for p in self.root.iterdir() if p.is_dir()]
        folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        current_folder = self.folder(current)
        kept = [current_folder]
        removed = []
        for folder in folders:
            if folder == current_folder:
                continue
            if len(kept) < max(keep, 1):
                kept.append(folder)
                continue
            shutil.rmtree(folder)
            removed.append(folder)
            log.info("removed old influence cache %s", folder)
        return removed
