"""Typed settings, read once at the entry point and handed to constructors.

A settings file (YAML or TOML) may hold any of the sections below; command-line flags override
it. Secrets (API keys, passwords) are never read from files: only from the environment, by
:func:`secrets_from_env`, called in ``cli.py``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A settings file or value is wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class ModelConfig:
    """Which classifier to build and the input size it expects."""

    arch: str = "resnet18_small"
    width: int = 16  # channels of the first stage, for the small-image ResNet only (64 = full)
    image_size: int = 32
    pretrained: bool = False  # torchvision ImageNet weights (from the torch cache; no download)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by plain and paired training."""

    epochs: int = 15
    batch_size: int = 32  # 64 left the objects under-trained in 10 epochs (bench/README.md)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    num_workers: int = 0
    augment: bool = True  # random crop (pad 2) + horizontal flip


# Fine-tuning a trained model (sync-train, Start Training) wants gentler steps than training
# from scratch: at lr 0.05 / batch 64 paired fine-tuning on a few hundred images collapsed in
# its first epoch; lr 0.02 / batch 16 did not (bench/README.md, "paired training").
FINETUNE_DEFAULTS = {"epochs": 12, "lr": 0.02, "batch_size": 16}


@dataclass(frozen=True)
class PairedConfig:
    """Paired training: x is paired with a copy whose spurious pixels are filled."""

    fill: str = "noise"
    align_weight: float = 0.1
    worst_of: int = 1  # >1: of K random fills, train on the one with the highest loss


@dataclass(frozen=True)
class SyntheticConfig:
    """A spurious-feature benchmark dataset (``robustar-ls make-dataset``)."""

    kind: str = "patch"
    size: int = 32
    per_class: int = 250
    test_per_class: int = 100
    val_per_class: int = 100
    classes: int = 4
    bias: float = 1.0  # no misaligned image: nothing in the data argues against the shortcut
    spurious_fraction: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class LabelStudioConfig:
    """How to reach Label Studio. The API key comes from the environment only."""

    url: str = "http://localhost:8080"
    api_key: str = field(default="", repr=False)
    project: str = "robustar-ls"
    document_root: str = ""


@dataclass(frozen=True)
class SyncConfig:
    """Pulling finished brush annotations from Label Studio (``robustar_ls.labelstudio.sync``)."""

    retries: int = 4  # retries per request on connection errors / 5xx answers
    backoff: float = 0.5  # seconds before the first retry; doubled each time
    page_size: int = 100  # tasks per page
    label: str = "Spurious"  # the brush label whose regions make the mask


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


@dataclass(frozen=True)
class SegmenterConfig:
    """Mask R-CNN (COCO) segmenter that pre-fills the "Spurious" brush region.

    ``weights``: a state_dict (or a checkpoint dict holding one under ``model``/``state_dict``);
    ``None`` = torchvision's file in the torch hub cache. Nothing is ever downloaded.
    """

    weights: str | None = None
    score_threshold: float = 0.5  # instances scoring at least this form the object
    min_region_px: int = 16  # spurious specks/holes smaller than this merge into surroundings
    device: str = "auto"
    mask_threshold: float = 0.5  # a pixel belongs to an instance when its mask prob. is >= this
    batch_size: int = 4  # images per Mask R-CNN forward pass
    min_size: int = 800  # Mask R-CNN resizes images so the short side is this (COCO: 800)
    max_size: int = 1333  # ... and the long side at most this


@dataclass(frozen=True)
class SaliencyConfig:
    """Where the classifier looks: Grad-CAM or plain input gradients."""

    method: str = "gradcam"  # "gradcam" | "input_gradient"
    top_fraction: float = 0.1  # share of pixels in the "Model attention" brush region


@dataclass(frozen=True)
class ServeConfig:
    """The ML backend (``robustar-ls serve``). Secrets come from the environment only.

    ``secret`` signs the saliency-heatmap URLs written into task data. It must be the same in
    every gunicorn worker and in ``robustar-ls import`` (which writes the URLs): set
    ``ROBUSTAR_LS_SECRET``, or leave it empty and every process on this machine shares the
    random key kept in ``<cache_dir>/secret.key`` (created once, mode 0600). A key made per
    worker would make each worker reject the others' URLs.
    """

    checkpoint: str = ""
    document_root: str = ""  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT: local files are read here
    label_studio_url: str = "http://localhost:8080"
    label_studio_api_key: str = field(default="", repr=False)  # legacy token or PAT (env)
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    segmenter_weights: str | None = None  # None = torchvision's file in the torch hub cache
    segmenter: bool = True  # False = no Mask R-CNN pre-annotation at all
    score_threshold: float = 0.5
    saliency_method: str = "gradcam"  # "gradcam" | "input_gradient"
    top_fraction: float = 0.1
    batch_size: int = 16  # images per classifier / saliency / segmenter call
    max_image_pixels: int = 64_000_000
    max_image_bytes: int = 64 * 1024 * 1024
    fetch_timeout: float = 30.0  # seconds, for images fetched over HTTP
    cache_dir: str = ""  # saliency PNGs + the shared secret; "" = ~/.cache/robustar-ls
    prediction_cache_size: int = 512  # (model version, image) → model outputs, LRU
    device: str = "auto"
    host: str = "0.0.0.0"
    port: int = 9090
    workers: int = 1
    threads: int = 1
    timeout: int = 300  # gunicorn worker timeout, seconds
    data: str = ""  # dataset folder: enables "Start Training" (sync masks + paired training)
    project: str = "robustar-ls"  # the Label Studio project whose annotations train
    masks: str = ""  # mask store for training ("" = <data>/masks)

    def segmenter_config(self) -> SegmenterConfig:
        return SegmenterConfig(
            weights=self.segmenter_weights,
            score_threshold=self.score_threshold,
            device=self.device,
            batch_size=self.batch_size,
        )

    def saliency_config(self) -> SaliencyConfig:
        return SaliencyConfig(method=self.saliency_method, top_fraction=self.top_fraction)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


def default_cache_dir() -> Path:
    """Where the backend keeps saliency PNGs and its URL-signing key by default."""
    return Path.home() / ".cache" / "robustar-ls"


@dataclass(frozen=True)
class ImportConfig:
    """``robustar-ls import``: an ImageFolder dataset becomes a Label Studio project."""

    data: str = ""  # dataset folder with train/<class>/<image>
    backend_url: str = ""  # ML backend to connect ("" = none)
    label_config: str = ""  # labeling config XML file ("" = the packaged robustar.xml)
    batch_size: int = 1000  # tasks per import request
    # Where the browser reaches the backend's saliency heatmaps ("" = backend_url); differs
    # from backend_url under docker, where Label Studio calls http://backend:9090.
    saliency_base_url: str = ""
    cache_dir: str = ""  # the backend's cache dir, holding the URL-signing key ("" = default)


def secrets_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Secrets the entry points need, from the environment (never from a settings file)."""
    env = os.environ if environ is None else environ
    return {
        "label_studio_api_key": env.get("LABEL_STUDIO_API_KEY", "")
        or env.get("LABEL_STUDIO_USER_TOKEN", ""),
        "basic_auth_user": env.get("BASIC_AUTH_USER", ""),
        "basic_auth_pass": env.get("BASIC_AUTH_PASS", ""),
        "secret": env.get("ROBUSTAR_LS_SECRET", ""),
    }


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML settings file into a plain dict of sections."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read settings file {path}: {err.strerror}") from err
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"settings file {path} is not valid: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a mapping of sections")
    return data


def build(cls: type, *sources: dict[str, Any] | None) -> Any:
    """Build dataclass ``cls`` from mappings, later ones overriding; ``None`` values are skipped.

    Unknown keys are an error (a typo in a settings file should not be silently ignored).
    """
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for source in sources:
        for key, value in (source or {}).items():
            key = key.replace("-", "_")
            if key not in known:
                raise ConfigError(
                    f"unknown setting {key!r} for {cls.__name__}; known: {', '.join(known)}"
                )
            if value is not None:
                values[key] = value
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"bad settings for {cls.__name__}: {err}") from err


def pick(namespace: Any, cls: type) -> dict[str, Any]:
    """The attributes of an argparse namespace that are fields of ``cls`` (None = not given)."""
    return {f.name: getattr(namespace, f.name, None) for f in fields(cls)}


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for saving next to outputs)."""
    return dataclasses.asdict(obj)
