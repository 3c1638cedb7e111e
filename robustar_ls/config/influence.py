"""Influence scoring settings (``robustar-ls influence``, the backend's influence refresh)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InfluenceConfig:
    """Influence scoring (``robustar-ls influence``): which training images drive test errors.

    Per-sample gradients of ``layers`` (default: last block + head) are projected to ``k``
    dimensions (``projection``: "sketch" = sparse sign sketch, O(parameters) per image;
    "gaussian" = dense Gaussian generated chunk by chunk from ``seed``). The score of a training
    image is the TRAK kernel ``psi_test^T (Phi^T Phi + lambda I)^-1 phi_train`` with
    ``lambda = damping * trace(Phi^T Phi) / k``, aggregated over the misclassified test images
    (see ``robustar_ls/explain/influence.py`` and the measurements in ``bench/README.md``).
    """

    layers: tuple[str, ...] = ()  # module names; empty = head_and_last_block(model)
    k: int = 2048
    projection: str = "sketch"  # "sketch" | "gaussian"
    seed: int = 0
    damping: float = 10.0  # relative to the mean eigenvalue of Phi^T Phi (bench/README.md)
    aggregate: str = "normalized"  # "normalized" (each test error counts the same) | "sum"
    support: int = 100  # an image "drives" a test error when among its top-`support` images
    explain_top: int = 3  # test errors recorded per training image
    batch_size: int = 64
    dtype: str = "float16"  # train feature cache: "float16" (with per-row scale) | "float32"
    device: str = "auto"
    test_split: str = "test"
    keep_versions: int = 2  # cached model versions kept on disk
    balance_classes: bool = False  # ranks in class turns (workflows/influence.take_class_turns)
