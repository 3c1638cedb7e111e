"""The influence scorer's named results and its error (no torch: plain arrays and dicts)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustar_ls.data.folders import Sample
from robustar_ls.errors import RobustarError

Progress = Callable[..., Iterable]


class InfluenceError(RobustarError, ValueError):
    """Influence cannot be computed as asked; the message says what to change."""


@dataclass(frozen=True)
class ScoreRequest:
    """One scoring: every ``train`` image against the misclassified images of ``test``, for
    the model ``model_version`` (its input ``image_size``, its ``classes``)."""

    train: Sequence[Sample]
    test: Sequence[Sample]
    image_size: int
    model_version: str
    classes: Sequence[str]
    cache_root: Path | None = None  # train features per model version; None = a discarded one
    top: int | None = None  # explanations recorded for the ``top`` highest images only


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


def with_progress(progress: Progress | None, iterable: Iterable, **kwargs) -> Iterable:
    """``iterable`` wrapped by ``progress`` (e.g. tqdm) when one is given."""
    return progress(iterable, **kwargs) if progress else iterable


def empty_kernel_scores(n: int) -> KernelScores:
    """Scores of ``n`` training images when the model makes no test error: all zero."""
    return KernelScores(
        np.zeros(n), np.zeros(n, np.int64), np.zeros((n, 0), np.int64), np.zeros((n, 0))
    )


def build_result(
    relpaths: Sequence[str],
    errors: list[MisclassifiedTest],
    kernel: KernelScores,
    classes: Sequence[str],
    model_version: str,
    top: int | None,
    config: dict[str, Any],
) -> InfluenceResult:
    """Rank the training images by ``kernel.scores`` and describe what the ``top`` explain."""
    order = sorted(range(len(relpaths)), key=lambda i: (-kernel.scores[i], relpaths[i]))
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
        config=config,
    )
