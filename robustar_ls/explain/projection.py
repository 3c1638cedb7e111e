"""Random projections of per-sample gradients to ``k`` dimensions, generated from a seed.

Both projections map a flattened gradient ``g`` (length ``d``) to ``g @ P`` with a random
``P`` (``d x k``) for which ``E[(g P) . (h P)] = g . h``, so dot products (and the TRAK kernel
built from them) are preserved in expectation. Neither materialises ``P``:

- :class:`SketchProjection` (default): a sparse sign sketch (CountSketch). Each gradient
  coordinate ``j`` is added, with a random sign ``s_j``, to one random output bucket ``h_j``:
  ``P[j, h_j] = s_j`` and zero elsewhere. Cost O(d) per image (one ``index_add_``) instead of
  O(d k); state is two length-``d`` arrays. For dense vectors its dot-product variance,
  ``(|g|^2 |h|^2 + (g.h)^2 - 2 sum_j g_j^2 h_j^2) / k``, is that of a Gaussian projection less
  a non-negative term, so nothing is lost in accuracy.
- :class:`GaussianProjection`: ``P`` with N(0, 1/k) entries, generated block by block (rows
  ``[c R, (c+1) R)`` from a generator seeded by ``(seed, c)``), blocks kept in memory up to a
  budget and regenerated otherwise. This is the classic TRAK projection; it costs a dense
  ``d x k`` product per image (measured in ``bench/bench_influence.py``).

Both are generated on the CPU (then moved), so features do not depend on the device.
``dense()`` returns the full matrix, for tests on small ``d``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from robustar_ls.errors import RobustarError

PROJECTIONS = ("sketch", "gaussian")


class ProjectionError(RobustarError, ValueError):
    """Unknown projection or impossible size."""


def _check(dims: Sequence[int], k: int) -> int:
    if k < 1:
        raise ProjectionError(f"projection size k must be at least 1, got {k}")
    d = int(sum(dims))
    if d < 1:
        raise ProjectionError("no gradient coordinates to project (empty layer selection?)")
    return d


class SketchProjection:
    """Sparse sign sketch: ``out[:, h_j] += s_j * g[:, j]`` (CountSketch), exact and O(d)."""

    def __init__(self, dims: Sequence[int], k: int, seed: int = 0) -> None:
        self.d = _check(dims, k)
        self.k = k
        self.dims = list(dims)
        generator = torch.Generator().manual_seed(int(seed))
        self.buckets = torch.randint(k, (self.d,), generator=generator)
        self.signs = torch.randint(2, (self.d,), generator=generator, dtype=torch.int8) * 2 - 1
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _state(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self.buckets.to(device), self.signs.to(device))
        return self._on[device]

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """``grads``: per-parameter tensors ``(B, *shape)`` in ``dims`` order → ``(B, k)``."""
        first = grads[0]
        buckets, signs = self._state(first.device)
        out = torch.zeros(first.shape[0], self.k, device=first.device, dtype=torch.float32)
        offset = 0
        for g in grads:
            flat = g.reshape(g.shape[0], -1).float()
            n = flat.shape[1]
            out.index_add_(1, buckets[offset : offset + n], flat * signs[offset : offset + n])
            offset += n
        if offset != self.d:
            raise ProjectionError(f"got {offset} gradient coordinates, expected {self.d}")
        return out

    def dense(self) -> torch.Tensor:
        """The full ``d x k`` matrix (tests only)."""
        matrix = torch.zeros(self.d, self.k)
        matrix[torch.arange(self.d), self.buckets] = self.signs.float()
        return matrix


class GaussianProjection:
    """N(0, 1/k) projection generated in row blocks from ``(seed, block)``; never whole."""

    def __init__(
        self,
        dims: Sequence[int],
        k: int,
        seed: int = 0,
        block_rows: int = 8192,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.d = _check(dims, k)
        self.k = k
        self.dims = list(dims)
        self.seed = int(seed)
        self.block_rows = int(block_rows)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._cached_bytes = 0

    @property
    def blocks(self) -> int:
        return math.ceil(self.d / self.block_rows)

    def block(self, index: int, device: torch.device | None = None) -> torch.Tensor:
        """Rows ``[index R, (index + 1) R)`` of P, as ``(rows, k)`` float32."""
        device = device or torch.device("cpu")
        key = (index, device)
        if key in self._cache:
            return self._cache[key]
        rows = min(self.block_rows, self.d - index * self.block_rows)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        block = torch.randn(rows, self.k, generator=generator).div_(math.sqrt(self.k))
        block = block.to(device)
        size = block.numel() * 4
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[key] = block
            self._cached_bytes += size
        return block

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """``grads``: per-parameter tensors ``(B, *shape)`` in ``dims`` order → ``(B, k)``."""
        flat = torch.cat([g.reshape(g.shape[0], -1).float() for g in grads], dim=1)
        if flat.shape[1] != self.d:
            raise ProjectionError(f"got {flat.shape[1]} gradient coordinates, expected {self.d}")
        out = torch.zeros(flat.shape[0], self.k, device=flat.device)
        for index in range(self.blocks):
            lo = index * self.block_rows
            rows = flat[:, lo : lo + self.block_rows]
            out.addmm_(rows, self.block(index, flat.device))
        return out

    def dense(self) -> torch.Tensor:
        """The full ``d x k`` matrix (tests only)."""
        return torch.cat([self.block(i) for i in range(self.blocks)])


def make_projection(
    kind: str, dims: Sequence[int], k: int, seed: int = 0
) -> SketchProjection | GaussianProjection:
    """The projection named ``kind`` ("sketch" or "gaussian")."""
    if kind == "sketch":
        return SketchProjection(dims, k, seed)
    if kind == "gaussian":
        return GaussianProjection(dims, k, seed)
    raise ProjectionError(f"unknown projection {kind!r}; choose one of: {', '.join(PROJECTIONS)}")
