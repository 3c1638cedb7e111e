"""The influence kernel ``S = Phi (Phi^T Phi + lambda I)^-1 Psi^T``, streamed and aggregated."""

from __future__ import annotations

import numpy as np
import torch

from robustar_ls.config import InfluenceConfig
from robustar_ls.explain.feature_cache import TrainFeatures
from robustar_ls.explain.influence_types import (
    InfluenceError,
    KernelScores,
    Progress,
    with_progress,
)

AGGREGATES = ("sum", "normalized")

ERROR_TOP = 5  # training images recorded per test error (most influential first)


def damping_value(gram: np.ndarray, damping: float) -> float:
    """``damping * trace(gram) / k``: ``damping`` times the mean eigenvalue of ``Phi^T Phi``."""
    return float(damping * np.trace(gram) / gram.shape[0])


def _solve(
    train: TrainFeatures, test: np.ndarray, damping: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``W = (Phi^T Phi + lambda I)^-1 Psi^T`` (float64, CPU) and the mean and std of each
    column of ``S = Phi W`` over the train rows, from the sufficient statistics alone."""
    n, k = train.n, train.k
    gram = torch.from_numpy(np.asarray(train.gram, dtype=np.float64))
    lam = damping_value(train.gram, damping)
    hessian = gram + max(lam, 1e-12) * torch.eye(k, dtype=torch.float64)
    chol = torch.linalg.cholesky(hessian)
    weights = torch.cholesky_solve(torch.from_numpy(test.T.copy()), chol)  # (k, T)
    mean = torch.from_numpy(train.feature_sum) @ weights / max(n, 1)
    second = (weights * (gram @ weights)).sum(0) / max(n, 1)
    std = (second - mean**2).clamp_min(0).sqrt().clamp_min(1e-30)
    return weights, mean, std


def kernel_scores(
    train: TrainFeatures,
    test: np.ndarray,
    cfg: InfluenceConfig = InfluenceConfig(),
    *,
    rows_per_chunk: int = 8192,
    progress: Progress | None = None,
    device: torch.device | str = "cpu",
) -> KernelScores:
    """Stream ``S = Phi (Phi^T Phi + lambda I)^-1 Psi^T`` over the train rows and aggregate.

    ``test``: ``(T, k)`` test-side features. ``cfg``: the influence settings the kernel reads
    (``damping``, ``aggregate``, ``support``, ``explain_top``). Memory: one
    ``(rows_per_chunk, T)`` block. The k x k solve runs in float64 on the CPU; the streamed
    products on ``device``.
    """
    aggregate = cfg.aggregate
    if aggregate not in AGGREGATES:
        raise InfluenceError(f"unknown aggregate {aggregate!r}; choose one of {AGGREGATES}")
    n, k = train.n, train.k
    test = np.asarray(test, dtype=np.float64)
    if test.ndim != 2 or test.shape[1] != k:
        raise InfluenceError(f"test features have shape {test.shape}, expected (T, {k})")
    t_count = test.shape[0]
    weights, mean, std = _solve(train, test, cfg.damping)
    device = torch.device(device)
    weights32 = weights.float().to(device)
    mean32, std32 = mean.float().to(device), std.float().to(device)
    normalise = aggregate == "normalized"
    m = min(cfg.explain_top, t_count)
    keep = min(cfg.support, n)
    scores = np.zeros(n, dtype=np.float64)
    top_index = np.zeros((n, m), dtype=np.int64)
    top_value = np.zeros((n, m), dtype=np.float32)
    best_val = torch.full((0, t_count), float("-inf"), device=device)
    best_idx = torch.zeros((0, t_count), dtype=torch.int64, device=device)
    starts = range(0, n, rows_per_chunk)
    for start in with_progress(progress, starts, desc="influence query", unit="chunk"):
        stop = min(start + rows_per_chunk, n)
        block = torch.from_numpy(train.rows(start, stop)).to(device) @ weights32  # (rows, T)
        if normalise:
            block = (block - mean32) / std32
        scores[start:stop] = block.double().sum(1).cpu().numpy()
        if m:
            values, index = block.topk(m, dim=1)
            top_value[start:stop] = values.cpu().numpy()
            top_index[start:stop] = index.cpu().numpy()
        rows = torch.arange(start, stop, device=device).unsqueeze(1).expand(-1, t_count)
        merged_val = torch.cat([best_val, block])
        merged_idx = torch.cat([best_idx, rows])
        take = min(keep, merged_val.shape[0])
        best_val, pos = merged_val.topk(take, dim=0)
        best_idx = merged_idx.gather(0, pos)
    drives = np.bincount(best_idx[best_val > 0].cpu().numpy(), minlength=n).astype(np.int64)
    error_top = best_idx[:ERROR_TOP].T.cpu().numpy()
    return KernelScores(scores, drives, top_index, top_value, error_top)
