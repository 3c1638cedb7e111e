"""Which training images drive the model's test errors: TRAK-style projected-gradient influence.

For a model ``f`` restricted to the parameters ``theta`` of ``layers`` (default: last block +
head), with a random projection ``P`` (:mod:`robustar_ls.explain.projection`, a sparse sign
sketch by default):

- train side, once per model version and cached on disk (:mod:`feature_cache`):
  ``phi_i = P^T grad_theta m(x_i)`` with the *margin* ``m = z_y - logsumexp_{j != y} z_j``.
  Unlike the loss, its gradient does not vanish when the image is fitted, so images whose
  shortcut the model has already learned keep large features (TRAK's ``(1 - p_i)`` weight is
  dropped for the same reason);
- test side, for every misclassified test image ``t`` (true ``y``, predicted ``yhat``):
  ``psi_t = P^T grad_theta (z_yhat - z_y)``, the direction that pushes it further toward the
  wrong class (it does not vanish for confidently wrong images either);
- kernel: ``S[i, t] = phi_i^T (Phi^T Phi + lambda I)^-1 psi_t`` with
  ``lambda = damping * trace(Phi^T Phi) / k``, i.e. relative to the mean eigenvalue, so one
  ``damping`` means the same for 1,000 or 100,000 images. The default (10) shrinks only the few
  dominant directions (shared by whole classes) and leaves the rest as plain dot products.
  ``S[i, t] > 0``: training on image i (raising its margin) moves test image t toward its
  wrong prediction;
- aggregate into one score per training image (``cfg.aggregate``): ``normalized`` (default)
  standardises each test error's column over the training images first, so every error counts
  the same; ``sum`` adds the raw values. Each image also records how many errors it "drives"
  (it is among that error's ``cfg.support`` highest) and the errors it explains most.

A query is one gradient and one projection per test error and a streaming ``(n, k) x (k, T)``
product over the memory-mapped train features. The variants and the defaults were measured in
``bench/bench_influence.py`` (numbers in ``bench/README.md``).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader

from robustar_ls.config import InfluenceConfig
from robustar_ls.data.folders import ImageDataset, Sample
from robustar_ls.errors import RobustarError
from robustar_ls.explain.feature_cache import FeatureCache, TrainFeatures
from robustar_ls.explain.projection import make_projection
from robustar_ls.models.zoo import default_device, head_and_last_block

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]
TARGETS = ("margin", "error", "loss")
AGGREGATES = ("sum", "normalized")
CACHE_FORMAT = 1
ERROR_TOP = 5  # training images recorded per test error (most influential first)
GRAD_BYTES = 256 * 2**20  # per-sample gradients held at once (micro-batches are cut to fit)


class InfluenceError(RobustarError, ValueError):
    """Influence cannot be computed as asked; the message says what to change."""


def parameter_names(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """Names of the trainable parameters inside ``layers``, in ``named_parameters`` order."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise InfluenceError(
            f"layers {missing} are not modules of the model; some valid names: "
            f"{[n for n in modules if n][-8:]}"
        )
    prefixes = tuple(f"{name}." if name else "" for name in layers)
    names = [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and name.startswith(prefixes)
    ]
    if not names:
        raise InfluenceError(f"layers {list(layers)} hold no trainable parameters")
    return names


def target_value(logits: torch.Tensor, label: torch.Tensor, target: str) -> torch.Tensor:
    """The scalar whose gradient is a sample's feature (one sample's logits, shape (C,)).

    ``margin``: ``z_y - logsumexp_{j != y} z_j``; ``error``: ``z_argmax - z_y``; ``loss``:
    cross-entropy (baselines only). Written without data-dependent indexing so it vmaps.
    """
    classes = torch.arange(logits.shape[-1], device=logits.device)
    is_true = classes == label
    z_true = torch.where(is_true, logits, torch.zeros_like(logits)).sum()
    if target == "margin":
        others = logits.masked_fill(is_true, float("-inf"))
        return z_true - torch.logsumexp(others, dim=0)
    if target == "error":
        is_pred = classes == logits.argmax()
        return torch.where(is_pred, logits, torch.zeros_like(logits)).sum() - z_true
    if target == "loss":
        return torch.logsumexp(logits, dim=0) - z_true
    raise InfluenceError(f"unknown gradient target {target!r}; choose one of {TARGETS}")


@dataclass(frozen=True)
class MisclassifiedTest:
    """A misclassified test image."""

    relpath: str
    true: int
    predicted: int
    confidence: float  # softmax probability of the predicted class


@dataclass
class KernelScores:
    """Per-training-image output of :func:`kernel_scores` (arrays aligned with train rows)."""

    scores: np.ndarray  # (n,) float64, higher = drives the errors more
    drives: np.ndarray  # (n,) int: test errors whose top-`support` images include this one
    top_index: np.ndarray  # (n, m) int: the test errors this image explains most
    top_value: np.ndarray  # (n, m) float32: their (aggregate-scaled) kernel values
    # (T, j) int: per test error, the train rows with the highest kernel values, highest first
    error_top: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))


@dataclass
class InfluenceResult:
    """Scores of every training image for one model version (higher = more responsible)."""

    model_version: str
    scores: dict[str, float]  # train relpath → score
    ranks: dict[str, int]  # train relpath → 1-based rank (1 = most responsible)
    explains: dict[str, list[dict[str, Any]]]  # relpath → [{test, true, predicted, value}]
    drives: dict[str, int]  # relpath → number of test errors it is a top contributor to
    test_errors: list[dict[str, Any]]  # [{test, true, predicted, confidence, top_train}]
    config: dict[str, Any] = field(default_factory=dict)
    # every test image: relpath → {true, predicted, confidence} (the errors are among them)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ranked(self, top: int | None = None) -> list[str]:
        """Train relpaths, most responsible first (the first ``top`` when given)."""
        order = sorted(self.ranks, key=self.ranks.__getitem__)
        return order if top is None else order[:top]

    def explain_text(self, relpath: str) -> str:
        """One line for the labeling view, e.g. ``drives 12 errors, e.g. test/a.png: a → b``."""
        items = self.explains.get(relpath) or []
        if not items:
            return "" if not self.test_errors else "drives no test error"
        examples = "; ".join(f"test/{e['test']}: {e['true']} → {e['predicted']}" for e in items[:2])
        count = self.drives.get(relpath, 0)
        noun = "error" if count == 1 else "errors"
        return f"drives {count} {noun}, e.g. {examples}"


def _progress(progress: Progress | None, iterable: Iterable, **kwargs) -> Iterable:
    return progress(iterable, **kwargs) if progress else iterable


def images_fingerprint(samples: Sequence[Sample]) -> str:
    """Hash of the training images' relpaths, sizes and modification times (cache key)."""
    digest = hashlib.sha256()
    for sample in samples:
        stat = sample.path.stat()
        digest.update(
            f"{sample.relpath}\0{sample.label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


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
    *,
    damping: float = InfluenceConfig.damping,
    aggregate: str = InfluenceConfig.aggregate,
    support: int = InfluenceConfig.support,
    explain_top: int = InfluenceConfig.explain_top,
    rows_per_chunk: int = 8192,
    progress: Progress | None = None,
    device: torch.device | str = "cpu",
) -> KernelScores:
    """Stream ``S = Phi (Phi^T Phi + lambda I)^-1 Psi^T`` over the train rows and aggregate.

    ``test``: ``(T, k)`` test-side features. Memory: one ``(rows_per_chunk, T)`` block. The
    k x k solve runs in float64 on the CPU; the streamed products on ``device``.
    """
    if aggregate not in AGGREGATES:
        raise InfluenceError(f"unknown aggregate {aggregate!r}; choose one of {AGGREGATES}")
    n, k = train.n, train.k
    test = np.asarray(test, dtype=np.float64)
    if test.ndim != 2 or test.shape[1] != k:
        raise InfluenceError(f"test features have shape {test.shape}, expected (T, {k})")
    t_count = test.shape[0]
    weights, mean, std = _solve(train, test, damping)
    device = torch.device(device)
    weights32 = weights.float().to(device)
    mean32, std32 = mean.float().to(device), std.float().to(device)
    normalise = aggregate == "normalized"
    m = min(explain_top, t_count)
    keep = min(support, n)
    scores = np.zeros(n, dtype=np.float64)
    top_index = np.zeros((n, m), dtype=np.int64)
    top_value = np.zeros((n, m), dtype=np.float32)
    best_val = torch.full((0, t_count), float("-inf"), device=device)
    best_idx = torch.zeros((0, t_count), dtype=torch.int64, device=device)
    starts = range(0, n, rows_per_chunk)
    for start in _progress(progress, starts, desc="influence query", unit="chunk"):
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


class InfluenceScorer:
    """Scores training images by how much they drive a model's test errors.

    ``layers``: module names whose parameters' gradients are used (None = ``cfg.layers`` or
    :func:`head_and_last_block`). The model is put in eval mode (batch-norm statistics fixed).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        cfg: InfluenceConfig | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.cfg = cfg or InfluenceConfig()
        self.device = torch.device(device) if device else default_device(self.cfg.device)
        self.model = model.eval().to(self.device)
        self.layers = list(layers or self.cfg.layers or head_and_last_block(model))
        self.names = parameter_names(model, self.layers)
        named = dict(model.named_parameters())
        self.dims = [named[name].numel() for name in self.names]
        self.projection = make_projection(self.cfg.projection, self.dims, self.cfg.k, self.cfg.seed)
        self.featurized = 0  # images featurized by this scorer (cache hits add nothing)

    # -- features -------------------------------------------------------------------------

    def _per_sample_grad(self, target: str) -> Callable:
        chosen = set(self.names)
        params = {n: p.detach() for n, p in self.model.named_parameters() if n in chosen}
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in chosen}
        frozen.update({n: b.detach() for n, b in self.model.named_buffers()})
        model = self.model

        def value(theta, image, label):
            logits = functional_call(model, (theta, frozen), (image.unsqueeze(0),))[0]
            return target_value(logits, label, target)

        batched = vmap(grad(value), in_dims=(None, 0, 0))
        return lambda images, labels: batched(params, images, labels)

    def feature_batches(
        self, loader: Iterable, target: str = "margin", progress: Progress | None = None
    ) -> Iterator[np.ndarray]:
        """Projected per-sample gradients of ``target``, one ``(B, k)`` float32 array per batch."""
        if target not in TARGETS:
            raise InfluenceError(f"unknown gradient target {target!r}; choose one of {TARGETS}")
        per_sample = self._per_sample_grad(target)
        micro = max(1, GRAD_BYTES // (4 * sum(self.dims)))
        for images, labels in _progress(progress, loader, desc=f"gradients ({target})"):
            images, labels = images.to(self.device), torch.as_tensor(labels).to(self.device)
            parts = []
            for lo in range(0, len(images), micro):
                grads = per_sample(images[lo : lo + micro], labels[lo : lo + micro])
                parts.append(self.projection.project([grads[n] for n in self.names]))
            self.featurized += len(images)
            yield torch.cat(parts).cpu().numpy()

    def featurize(
        self, loader: Iterable, target: str = "margin", progress: Progress | None = None
    ) -> np.ndarray:
        """``(n, k)`` float32 projected gradients of every sample of ``loader`` (in memory)."""
        batches = list(self.feature_batches(loader, target, progress))
        return np.concatenate(batches) if batches else np.zeros((0, self.cfg.k), np.float32)

    def loader(self, samples: Sequence[Sample], image_size: int) -> DataLoader:
        """Images decoded on the fly (no in-memory cache: 100k images stay bounded)."""
        dataset = ImageDataset(samples, image_size, cache=False)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=False)

    def cache_meta(self, samples: Sequence[Sample], image_size: int, version: str) -> dict:
        """What the train features depend on; a cached folder is reused only if equal."""
        cfg = self.cfg
        return {
            "format": CACHE_FORMAT,
            "model_version": version,
            "layers": self.layers,
            "parameters": self.names,
            "d": int(sum(self.dims)),
            "k": cfg.k,
            "projection": cfg.projection,
            "seed": cfg.seed,
            "target": "margin",
            "dtype": cfg.dtype,
            "image_size": image_size,
            "n": len(samples),
            "images": images_fingerprint(samples),
        }

    def train_features(
        self,
        samples: Sequence[Sample],
        image_size: int,
        model_version: str,
        cache_root: str | Path,
        progress: Progress | None = None,
    ) -> TrainFeatures:
        """Train-side features for ``model_version``: from the cache, or computed and cached."""
        cache = FeatureCache(cache_root)
        meta = self.cache_meta(samples, image_size, model_version)
        cached = cache.load(model_version, meta)
        if cached is not None:
            return cached
        log.info(
            "featurizing %d training images (%d gradient coordinates → k=%d, %s projection)",
            len(samples),
            meta["d"],
            self.cfg.k,
            self.cfg.projection,
        )
        writer = cache.writer(model_version, len(samples), self.cfg.k, self.cfg.dtype, meta)
        start = 0
        for block in self.feature_batches(self.loader(samples, image_size), "margin", progress):
            writer.write(start, block)
            start += len(block)
        features = writer.finish()
        cache.prune(self.cfg.keep_versions, model_version)
        return features

    # -- predictions ------------------------------------------------------------------------

    @torch.no_grad()
    def predictions(self, samples: Sequence[Sample], image_size: int) -> list[MisclassifiedTest]:
        """The model's prediction for every image of ``samples`` (right or wrong)."""
        out, offset = [], 0
        for images, labels in self.loader(samples, image_size):
            conf, pred = self.model(images.to(self.device)).softmax(1).cpu().max(1)
            for j in range(len(labels)):
                sample = samples[offset + j]
                out.append(
                    MisclassifiedTest(sample.relpath, sample.label, int(pred[j]), float(conf[j]))
                )
            offset += len(labels)
        return out

    def test_errors(self, samples: Sequence[Sample], image_size: int) -> list[MisclassifiedTest]:
        """The misclassified images among ``samples``."""
        return [p for p in self.predictions(samples, image_size) if p.predicted != p.true]

    # -- scores -----------------------------------------------------------------------------

    def score(
        self,
        train: Sequence[Sample],
        test: Sequence[Sample],
        *,
        image_size: int,
        model_version: str,
        classes: Sequence[str],
        cache_root: str | Path | None = None,
        top: int | None = None,
        progress: Progress | None = None,
    ) -> InfluenceResult:
        """Score every training image against the misclassified images of ``test``.

        ``cache_root``: where train features are cached per model version (None = a temporary
        folder, discarded). ``top``: record explanations for the ``top`` highest only.
        """
        if not train:
            raise InfluenceError("no training images to score")
        predicted = self.predictions(test, image_size)
        errors = [p for p in predicted if p.predicted != p.true]
        log.info("%d of %d test images are misclassified", len(errors), len(test))
        with tempfile.TemporaryDirectory(prefix="robustar-influence-") as tmp:
            root = Path(cache_root) if cache_root is not None else Path(tmp)
            features = self.train_features(train, image_size, model_version, root, progress)
            if errors:
                by_rel = {s.relpath: s for s in test}
                wrong = [by_rel[e.relpath] for e in errors]
                test_feats = self.featurize(self.loader(wrong, image_size), "error", progress)
                kernel = kernel_scores(
                    features,
                    test_feats,
                    damping=self.cfg.damping,
                    aggregate=self.cfg.aggregate,
                    support=self.cfg.support,
                    explain_top=self.cfg.explain_top,
                    progress=progress,
                    device=self.device,
                )
            else:
                log.warning("the model makes no test error: every influence score is 0")
                n = len(train)
                kernel = KernelScores(
                    np.zeros(n), np.zeros(n, np.int64), np.zeros((n, 0), np.int64), np.zeros((n, 0))
                )
            del features  # release the memmap before a temporary folder goes
        result = self._result(train, errors, kernel, classes, model_version, top)
        result.predictions = {
            p.relpath: {
                "true": classes[p.true],
                "predicted": classes[p.predicted],
                "confidence": round(p.confidence, 4),
            }
            for p in predicted
        }
        return result

    def _result(
        self,
        train: Sequence[Sample],
        errors: list[MisclassifiedTest],
        kernel: KernelScores,
        classes: Sequence[str],
        model_version: str,
        top: int | None,
    ) -> InfluenceResult:
        relpaths = [s.relpath for s in train]
        order = sorted(range(len(train)), key=lambda i: (-kernel.scores[i], relpaths[i]))
        ranks = {relpaths[i]: rank for rank, i in enumerate(order, start=1)}
        described = [
            {
                "test": e.relpath,
                "true": classes[e.true],
                "predicted": classes[e.predicted],
                "confidence": round(e.confidence, 4),
                "top_train": [relpaths[i] for i in kernel.error_top[t]]
                if t < len(kernel.error_top)
                else [],
            }
            for t, e in enumerate(errors)
        ]
        explains: dict[str, list[dict[str, Any]]] = {}
        drives: dict[str, int] = {}
        for i in order if top is None else order[:top]:
            rel = relpaths[i]
            drives[rel] = int(kernel.drives[i])
            explains[rel] = [
                {
                    **{key: described[t][key] for key in ("test", "true", "predicted")},
                    "value": float(v),
                }
                for t, v in zip(kernel.top_index[i], kernel.top_value[i], strict=True)
                if v > 0
            ]
        return InfluenceResult(
            model_version=model_version,
            scores={rel: float(kernel.scores[i]) for i, rel in enumerate(relpaths)},
            ranks=ranks,
            explains=explains,
            drives=drives,
            test_errors=described,
            config={**asdict(self.cfg), "layers": self.layers},
        )
