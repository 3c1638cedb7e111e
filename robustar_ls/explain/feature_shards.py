"""Train-side features computed by several processes (``torchrun``), resumable shard by shard.

The training set is cut into shards of whole batches (about :data:`TARGET_SHARDS` of them; the
cut depends only on the number of images and the batch size, not on the number of processes,
so a rerun with another ``--nproc-per-node`` reuses them). Each rank featurizes its share of
the shards not yet done and writes each one under ``<version folder>/shards/``::

    shard-00003.npz    rows [start, stop): stored features and row scales (as the cache stores
                       them), written to a temporary name and renamed when complete
    shard-00003.json   the completion marker, written last (atomically): the rows and a digest
                       of the cache description; a shard without it, or with another digest,
                       is featurized again

The Gram matrix and the feature sum are reduced over the ranks (``all_reduce``); rank 0 then
copies the shards into the version's memory-mapped cache (:mod:`feature_cache`), publishes it
and removes the shards. A killed run leaves the finished shards behind, and the next run
featurizes only the others. Several nodes need a cache folder they all see (a shared
filesystem): rank 0 reads every shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from robustar_ls.explain.feature_cache import (
    FeatureCache,
    FeatureCacheError,
    TrainFeatures,
    gram_of,
    quantize,
)
from robustar_ls.explain.influence_types import Progress, with_progress
from robustar_ls.files import atomic_write_bytes

log = logging.getLogger(__name__)

TARGET_SHARDS = 64  # shards per training set: the resume granularity and the load balance

Featurize = Callable[[int, int], Iterable[np.ndarray]]  # rows [start, stop) -> float32 blocks


class Ranks(Protocol):
    """Where this process stands (``train.distributed.DistContext`` is one)."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...


def shard_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` of each shard: whole batches, about :data:`TARGET_SHARDS`."""
    batches = math.ceil(n / max(batch_size, 1))
    rows = max(1, math.ceil(batches / TARGET_SHARDS)) * max(batch_size, 1)
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def meta_digest(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


class ShardStore:
    """The shard files of one cache folder, for one cache description (``digest``)."""

    def __init__(self, folder: Path, digest: str, dtype: str) -> None:
        self.folder, self.digest, self.dtype = folder / "shards", digest, dtype

    def _data(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.npz"

    def _marker(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.json"

    def is_done(self, index: int, bounds: tuple[int, int]) -> bool:
        try:
            marker = json.loads(self._marker(index).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        expected = {"digest": self.digest, "start": bounds[0], "stop": bounds[1]}
        return marker == expected and self._data(index).is_file()

    def write(self, index: int, bounds: tuple[int, int], block: np.ndarray) -> np.ndarray:
        """Store rows ``bounds`` (float32 features); returns the values stored (for the stats)."""
        stored, scales, values = quantize(block, self.dtype)
        if stored.shape[0] != bounds[1] - bounds[0]:
            raise FeatureCacheError(f"shard {index}: got {stored.shape[0]} rows for {bounds}")
        buffer = io.BytesIO()
        np.savez(buffer, features=stored, scales=scales)
        self._marker(index).unlink(missing_ok=True)
        atomic_write_bytes(self._data(index), buffer.getvalue())
        marker = {"digest": self.digest, "start": bounds[0], "stop": bounds[1]}
        atomic_write_bytes(self._marker(index), json.dumps(marker).encode())
        return values

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(stored features, row scales)`` of a finished shard."""
        with np.load(self._data(index)) as arrays:
            return arrays["features"], arrays["scales"]

    def values(self, index: int) -> np.ndarray:
        stored, scales = self.read(index)
        return stored.astype(np.float32) * scales[:, None]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _broadcast(ranks: Ranks, value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _reduced(ranks: Ranks, gram: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = torch.from_numpy(np.concatenate([gram.ravel(), total])).to(ranks.device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.cpu().numpy()
    k = total.shape[0]
    return flat[: k * k].reshape(k, k), flat[k * k :]


def sharded_features(
    featurize: Featurize,
    cache: FeatureCache,
    version: str,
    meta: dict[str, Any],
    *,
    batch_size: int,
    ranks: Ranks,
    progress: Progress | None = None,
) -> TrainFeatures | None:
    """The cached train features, computed over ``ranks`` where missing; rank 0 gets them,
    the other ranks None. ``featurize(start, stop)`` yields the features of rows
    ``[start, stop)`` in blocks. ``meta``: the cache description, with the rows ``n``, the
    dimension ``k`` and the stored ``dtype``. Every rank must call this (it holds
    collectives)."""
    n, k, main = int(meta["n"]), int(meta["k"]), ranks.rank == 0
    bounds = shard_bounds(n, batch_size)
    store = ShardStore(cache.folder(version), meta_digest(meta), str(meta["dtype"]))
    cached = cache.load(version, meta) if main else None
    plan = {"cached": cached is not None, "done": []}
    if main and cached is None:
        plan["done"] = [j for j, b in enumerate(bounds) if store.is_done(j, b)]
    if ranks.world_size > 1:
        plan = _broadcast(ranks, plan)
    if plan["cached"]:
        return cached
    done = set(plan["done"])
    pending = [j for j in range(len(bounds)) if j not in done]
    mine = pending[ranks.rank :: ranks.world_size]
    if main:
        log.info(
            "featurizing %d of %d shards (%d rows each) over %d processes; %d already written",
            len(pending),
            len(bounds),
            bounds[0][1] - bounds[0][0] if bounds else 0,
            ranks.world_size,
            len(done),
        )
    gram, total = np.zeros((k, k)), np.zeros(k)
    desc = f"featurizing (rank 0 of {ranks.world_size})"
    for j in with_progress(progress, mine, desc=desc, unit="shard"):
        blocks = list(featurize(*bounds[j]))
        block = np.concatenate(blocks) if blocks else np.zeros((0, k), np.float32)
        values = store.write(j, bounds[j], block)
        gram += gram_of(values)
        total += values.sum(axis=0, dtype=np.float64)
    for j in sorted(done)[ranks.rank :: ranks.world_size]:  # resumed: their statistics again
        values = store.values(j)
        gram += gram_of(values)
        total += values.sum(axis=0, dtype=np.float64)
    if ranks.world_size > 1:
        gram, total = _reduced(ranks, gram, total)
    return _on_rank0(ranks, lambda: _merge(cache, version, meta, store, bounds, gram, total))


def _on_rank0(ranks: Ranks, merge: Callable[[], TrainFeatures]) -> TrainFeatures | None:
    """Rank 0 runs ``merge`` (the shards into the cache); every rank learns whether it worked."""
    if ranks.rank != 0:
        error = _broadcast(ranks, None)
        if error:
            raise FeatureCacheError(f"rank 0 could not assemble the influence cache: {error}")
        return None
    try:
        features = merge()
    except Exception as err:
        if ranks.world_size > 1:
            _broadcast(ranks, f"{type(err).__name__}: {err}")
        raise
    if ranks.world_size > 1:
        _broadcast(ranks, None)
    return features


def _merge(
    cache: FeatureCache,
    version: str,
    meta: dict[str, Any],
    store: ShardStore,
    bounds: Sequence[tuple[int, int]],
    gram: np.ndarray,
    total: np.ndarray,
) -> TrainFeatures:
    missing = [j for j, b in enumerate(bounds) if not store.is_done(j, b)]
    if missing:
        raise FeatureCacheError(
            f"{len(missing)} of {len(bounds)} feature shards are missing in {store.folder} "
            "after every process finished; on several nodes the cache folder (--cache-dir) "
            "must be on a filesystem every node sees"
        )
    writer = cache.writer(version, int(meta["n"]), int(gram.shape[0]), store.dtype, meta)
    for j, (start, _) in enumerate(bounds):
        stored, scales = store.read(j)
        writer.put(start, stored, scales)
    writer.set_stats(gram, total)
    features = writer.finish()
    store.remove()
    return features
