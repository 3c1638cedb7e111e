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

One job a module: :mod:`influence_gradients` (per-sample gradients), :mod:`influence_kernel`
(the streamed kernel and its aggregation), :mod:`influence_types` (named results, the error,
explanations); this module holds the scorer and re-exports their public names.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from robustar_ls.config import InfluenceConfig
from robustar_ls.data.folders import Sample
from robustar_ls.data.tensors import ImageDataset
from robustar_ls.explain.feature_cache import FeatureCache, TrainFeatures
from robustar_ls.explain.feature_shards import Ranks, sharded_features
from robustar_ls.explain.influence_gradients import (
    GRAD_BYTES,
    TARGETS,
    parameter_names,
    per_sample_grad,
    target_value,
)
from robustar_ls.explain.influence_kernel import (
    AGGREGATES,
    ERROR_TOP,
    damping_value,
    kernel_scores,
)
from robustar_ls.explain.influence_types import (
    InfluenceError,
    InfluenceResult,
    KernelScores,
    MisclassifiedTest,
    Progress,
    ScoreRequest,
    build_result,
    empty_kernel_scores,
    with_progress,
)
from robustar_ls.explain.projection import make_projection
from robustar_ls.models.zoo import default_device, head_and_last_block

__all__ = [
    "AGGREGATES",
    "CACHE_FORMAT",
    "ERROR_TOP",
    "GRAD_BYTES",
    "TARGETS",
    "InfluenceError",
    "InfluenceResult",
    "InfluenceScorer",
    "KernelScores",
    "MisclassifiedTest",
    "ScoreRequest",
    "damping_value",
    "images_fingerprint",
    "kernel_scores",
    "parameter_names",
    "target_value",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def images_fingerprint(samples: Sequence[Sample]) -> str:
    """Hash of the training images' relpaths, sizes and modification times (cache key)."""
    digest = hashlib.sha256()
    for sample in samples:
        stat = sample.path.stat()
        digest.update(
            f"{sample.relpath}\0{sample.label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


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

    def feature_batches(
        self, loader: Iterable, target: str = "margin", progress: Progress | None = None
    ) -> Iterator[np.ndarray]:
        """Projected per-sample gradients of ``target``, one ``(B, k)`` float32 array per batch."""
        per_sample = per_sample_grad(self.model, self.names, target)
        micro = max(1, GRAD_BYTES // (4 * sum(self.dims)))
        for images, labels in with_progress(progress, loader, desc=f"gradients ({target})"):
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
        ranks: Ranks | None = None,
    ) -> TrainFeatures | None:
        """Train-side features for ``model_version``: from the cache, or computed and cached.

        ``ranks`` (under ``torchrun``): every process featurizes its share of shards
        (:mod:`feature_shards`, resumable); rank 0 gets the features, the others None.
        """
        cache = FeatureCache(cache_root)
        meta = self.cache_meta(samples, image_size, model_version)
        if ranks is None:
            cached = cache.load(model_version, meta)
            if cached is not None:
                return cached
            features = self._compute(cache, samples, image_size, meta, progress)
        else:
            features = sharded_features(
                lambda start, stop: self.feature_batches(
                    self.loader(samples[start:stop], image_size), "margin"
                ),
                cache,
                model_version,
                meta,
                batch_size=self.cfg.batch_size,
                ranks=ranks,
                progress=progress,
            )
            if features is None:
                return None
        cache.prune(self.cfg.keep_versions, model_version)
        return features

    def _compute(
        self,
        cache: FeatureCache,
        samples: Sequence[Sample],
        image_size: int,
        meta: dict,
        progress: Progress | None,
    ) -> TrainFeatures:
        log.info(
            "featurizing %d training images (%d gradient coordinates → k=%d, %s projection)",
            len(samples),
            meta["d"],
            self.cfg.k,
            self.cfg.projection,
        )
        version = meta["model_version"]
        writer = cache.writer(version, len(samples), self.cfg.k, self.cfg.dtype, meta)
        start = 0
        for block in self.feature_batches(self.loader(samples, image_size), "margin", progress):
            writer.write(start, block)
            start += len(block)
        return writer.finish()

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
        request: ScoreRequest,
        progress: Progress | None = None,
        ranks: Ranks | None = None,
    ) -> InfluenceResult | None:
        """Score every training image of ``request`` against its misclassified test images.

        Without ``request.cache_root`` the train features go to a temporary folder, discarded.
        ``ranks`` (under ``torchrun``): the train features are computed by every process; rank
        0 scores and returns the result, the other ranks return None.
        """
        train, test, size = request.train, request.test, request.image_size
        if not train:
            raise InfluenceError("no training images to score")
        if ranks is not None and request.cache_root is None:
            raise InfluenceError("featurizing over several processes needs a cache folder")
        with tempfile.TemporaryDirectory(prefix="robustar-influence-") as tmp:
            root = Path(request.cache_root or tmp)
            features = self.train_features(
                train, size, request.model_version, root, progress, ranks
            )
            if features is None:  # not rank 0: rank 0 scores
                return None
            predicted = self.predictions(test, size)
            errors = [p for p in predicted if p.predicted != p.true]
            log.info("%d of %d test images are misclassified", len(errors), len(test))
            kernel = self._kernel(features, errors, test, size, progress)
            del features  # release the memmap before a temporary folder goes
        return self._result(request, errors, kernel, predicted)

    def _result(
        self,
        request: ScoreRequest,
        errors: list[MisclassifiedTest],
        kernel: KernelScores,
        predicted: list[MisclassifiedTest],
    ) -> InfluenceResult:
        config = {**asdict(self.cfg), "layers": self.layers}
        relpaths, classes = [s.relpath for s in request.train], request.classes
        result = build_result(
            relpaths, errors, kernel, classes, request.model_version, request.top, config
        )
        result.predictions = {
            p.relpath: {
                "true": classes[p.true],
                "predicted": classes[p.predicted],
                "confidence": round(p.confidence, 4),
            }
            for p in predicted
        }
        return result

    def _kernel(
        self,
        features: TrainFeatures,
        errors: list[MisclassifiedTest],
        test: Sequence[Sample],
        image_size: int,
        progress: Progress | None,
    ) -> KernelScores:
        if not errors:
            log.warning("the model makes no test error: every influence score is 0")
            return empty_kernel_scores(features.n)
        by_rel = {s.relpath: s for s in test}
        wrong = [by_rel[e.relpath] for e in errors]
        test_feats = self.featurize(self.loader(wrong, image_size), "error", progress)
        return kernel_scores(features, test_feats, self.cfg, progress=progress, device=self.device)
