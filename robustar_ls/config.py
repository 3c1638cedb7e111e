"""Typed settings, read once at the entry point and handed to constructors.

A settings file (YAML or TOML) may hold any of the sections below; command-line flags override
it. Secrets (API keys, passwords) are never read from files: only from the environment, by
:func:`secrets_from_env`, called in ``cli/`` (``cli/options.py``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from robustar_ls.errors import RobustarError
from robustar_ls.labels import SPURIOUS_LABEL


class ConfigError(RobustarError, ValueError):
    """A settings file or value is wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class ModelConfig:
    """Which classifier to build and the input size it expects."""

    arch: str = "resnet18_small"
    width: int = 16  # channels of the first stage, for the small-image ResNet only (64 = full)
    image_size: int = 0  # input side, px; 0 = 32, or the pretrained weights' crop size (224)
    pretrained: bool = False  # start from torchvision's ImageNet weights (models/pretrained.py)
    offline: bool = False  # never download them (also ROBUSTAR_LS_OFFLINE=1, HF_HUB_OFFLINE=1)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by plain and paired training."""

    epochs: int = 15
    batch_size: int = 16  # 32 and 64 left the objects under-trained in 10 epochs (bench/)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    num_workers: int = 0
    augment: bool = True  # random crop (pad 2) + horizontal flip

    def __post_init__(self) -> None:  # settings files; flags were checked by argparse
        if isinstance(self.epochs, int) and self.epochs < 1:
            raise ConfigError(f"train setting 'epochs' must be at least 1, not {self.epochs}")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ConfigError(
                f"train setting 'batch_size' must be at least 1, not {self.batch_size}"
            )
        if isinstance(self.lr, int | float) and not self.lr > 0:
            raise ConfigError(f"train setting 'lr' must be positive, not {self.lr}")


# Fine-tuning a trained model (sync-train, Start Training) wants gentler steps than training
# from scratch: at lr 0.05 / batch 64 paired fine-tuning on a few hundred images collapsed in
# its first epoch; lr 0.02 / batch 16 did not (bench/README.md, "paired training").
FINETUNE_DEFAULTS = {"epochs": 12, "lr": 0.02, "batch_size": 16}


@dataclass(frozen=True)
class PairedConfig:
    """Paired training: x is paired with a copy whose spurious pixels are filled."""

    fill: str = "swap"  # measured best on both kinds (bench/README.md, the fixed swap fill)
    align_weight: float = 0.1
    worst_of: int = 1  # >1: of K random fills, train on the one with the highest loss


@dataclass(frozen=True)
class SyntheticConfig:
    """A spurious-feature benchmark dataset (``robustar-ls make-dataset``)."""

    kind: str = "patch"  # "patch" | "background" | "digits"
    size: int = 32
    per_class: int | None = None  # None: the kind's calibrated count (data/synthetic.py)
    test_per_class: int | None = None  # None: the kind's default (100; digits 40)
    val_per_class: int | None = None  # None: the kind's default (100; digits 30)
    classes: int | None = None  # None: the kind's default (4; digits 10)
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
    page_size: int = 1000  # tasks per page (one page for up to 1,000 annotated tasks)
    label: str = SPURIOUS_LABEL  # the brush label whose regions make the mask


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


@dataclass(frozen=True)
class SegmenterConfig:
    """Mask R-CNN (COCO) for the "Spurious" pre-annotation; README "Mask R-CNN" explains."""

    weights: str | None = None  # state_dict file; None = the torch hub cache (fetched if online)
    offline: bool = False  # True = never download the COCO weights (serve --offline)
    score_threshold: float = 0.5  # instances scoring at least this form the object
    min_region_px: int = 16  # spurious specks/holes smaller than this merge into surroundings
    device: str = "auto"
    mask_threshold: float = 0.5  # a pixel belongs to an instance when its mask prob. is >= this
    batch_size: int = 4  # images per Mask R-CNN forward pass
    min_size: int = 448  # Mask R-CNN resizes images so the short side is this (COCO: 800)
    max_size: int = 746  # ... and the long side at most this (COCO: 1333; same 0.6 ratio)
    rpn_pre_nms_top_n: int = 300  # RPN proposals kept per FPN level before NMS (COCO: 1000)
    rpn_post_nms_top_n: int = 100  # proposals the box head classifies (COCO: 1000)
    detections_per_img: int = 10  # boxes the mask head segments (COCO: 100)


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
    segmenter: bool = True  # False = no Mask R-CNN pre-annotation at all
    batch_size: int = 16  # images per classifier / saliency / segmenter call
    max_image_pixels: int = 40_000_000  # per image (checked on the header, before decoding)
    max_image_side: int = 12_000  # pixels, either side
    max_aspect_ratio: float = 20.0  # long side / short side
    working_side: int = 2048  # larger images are decoded at reduced size for the models
    max_request_pixels: int = 120_000_000  # all images of one /predict together
    max_tasks_per_request: int = 100  # later tasks get a per-task error
    max_response_bytes: int = 32 * 1024 * 1024  # /predict answer; later tasks get an error
    max_image_bytes: int = 64 * 1024 * 1024
    fetch_timeout: float = 30.0  # seconds, for images fetched over HTTP
    request_deadline: float = 60.0  # seconds per /predict: later images get a per-task error
    fetch_parallelism: int = 4  # images of one request fetched at the same time
    # Image hosts besides LS's origin: "host[:port]", "*.domain", "*": backend/url_policy.py
    allowed_image_hosts: tuple[str, ...] = ()
    cache_dir: str = ""  # saliency PNGs + the shared secret; "" = ~/.cache/robustar-ls
    saliency_url_lifetime: float = 7 * 24 * 3600.0  # seconds; predictions renew a URL
    prediction_cache_size: int = 512  # (model version, image) → model outputs, LRU
    device: str = "auto"
    host: str = "127.0.0.1"  # loopback only; "0.0.0.0" to listen on every interface (docker)
    port: int = 9090
    workers: int = 1
    threads: int = 4  # per worker: /health is answered while another thread predicts
    timeout: int = 300  # gunicorn worker timeout, seconds
    data: str = ""  # dataset folder: enables "Start Training" (sync masks + paired training)
    project: str = "robustar-ls"  # the Label Studio project whose annotations train
    masks: str = ""  # mask store for training ("" = <data>/masks)
    spurious_segmenter: str = ""  # learned segmenter ("" = <data>/.robustar/spurious_segmenter.pt)

    segmentation: SegmenterConfig = field(default_factory=SegmenterConfig)  # device, batch: ours
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)

    # flat names of the serve flags (and of older settings files) -> (nested config, field)
    ALIASES: ClassVar[dict[str, tuple[str, str]]] = {
        "segmenter_weights": ("segmentation", "weights"),
        "score_threshold": ("segmentation", "score_threshold"),
        "saliency_method": ("saliency", "method"),
        "top_fraction": ("saliency", "top_fraction"),
    }

    def segmenter_config(self) -> SegmenterConfig:
        """The segmenter's settings, with the backend's ``device`` and ``batch_size``."""
        return dataclasses.replace(
            self.segmentation, device=self.device, batch_size=self.batch_size
        )

    def saliency_config(self) -> SaliencyConfig:
        return self.saliency

    @property
    def segmenter_weights(self) -> str | None:
        return self.segmentation.weights

    @property
    def top_fraction(self) -> float:
        return self.saliency.top_fraction

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def last_good_dir(self) -> Path:
        """Where the last checkpoint that loaded is kept, for workers restarted after it broke."""
        return self.resolved_cache_dir() / "last-good"


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
    saliency_url_lifetime: float = 7 * 24 * 3600.0  # seconds; the backend's predictions renew


def check_basic_auth(user: str, password: str) -> None:
    """Basic auth is on with both user and password, off with neither; half-set is an error."""
    if bool(user) != bool(password):
        given, missing = (
            ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")
            if user
            else ("BASIC_AUTH_PASS", "BASIC_AUTH_USER")
        )
        raise ConfigError(
            f"{given} is set but {missing} is not: set both to protect the backend with HTTP "
            "basic auth, or neither"
        )


def secrets_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Secrets the entry points need, from the environment, never from a settings file
    (:class:`ConfigError` when only one of ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` is set)."""
    env = os.environ if environ is None else environ
    check_basic_auth(env.get("BASIC_AUTH_USER", ""), env.get("BASIC_AUTH_PASS", ""))
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


def build(cls: type, *sources: Mapping[str, Any] | None) -> Any:
    """Build dataclass ``cls`` from mappings, later ones overriding; ``None`` values are skipped.

    A field holding a config dataclass takes a mapping of its own fields (merged key by key
    across sources); ``cls.ALIASES`` maps flat names onto such nested fields. Unknown keys are
    an error (a typo in a settings file should not be silently ignored).
    """
    known = {f.name: f for f in fields(cls)}
    aliases: dict[str, tuple[str, str]] = getattr(cls, "ALIASES", {})
    values: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for source in sources:
        for key, value in (source or {}).items():
            key = key.replace("-", "_")
            if key in aliases:
                outer, inner = aliases[key]
                if value is not None:
                    nested.setdefault(outer, {})[inner] = value
                continue
            if key not in known:
                names = [*known, *aliases]
                raise ConfigError(
                    f"unknown setting {key!r} for {cls.__name__}; known: {', '.join(names)}"
                )
            if isinstance(value, Mapping) and _nested_type(known[key]) is not None:
                nested.setdefault(key, {}).update(value)
            elif value is not None:
                values[key] = _checked_value(cls, known[key], value)
    for key, mapping in nested.items():
        base = values.get(key)
        values[key] = build(_nested_type(known[key]), to_dict(base) if base else None, mapping)
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"bad settings for {cls.__name__}: {err}") from err


_KINDS = {  # annotation → (accepts, what to say)
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: isinstance(v, str), "a string"),
    "tuple[str, ...]": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(x, str) for x in v),
        "a list of strings",
    ),
}


def _checked_value(cls: type, f: dataclasses.Field, value: Any) -> Any:
    """``value`` if it has the field's type (an int is a float too); ConfigError otherwise."""
    kind = _KINDS.get(str(f.type))
    if kind is None:
        return value
    accepts, noun = kind
    if not accepts(value):
        raise ConfigError(
            f"setting {f.name!r} of {cls.__name__} must be {noun}, not {value!r}"[:300]
        )
    if str(f.type) == "float":
        return float(value)
    if str(f.type).startswith("tuple"):
        return tuple(value)
    return value


def _nested_type(f: dataclasses.Field) -> type | None:
    """The config dataclass a field holds (by its default factory), or None."""
    if f.default_factory is dataclasses.MISSING:
        return None
    default = f.default_factory()
    return type(default) if dataclasses.is_dataclass(default) else None


def pick(namespace: Any, cls: type) -> dict[str, Any]:
    """The attributes of an argparse namespace that are fields of ``cls`` (None = not given)."""
    names = [*(f.name for f in fields(cls)), *getattr(cls, "ALIASES", {})]
    return {name: getattr(namespace, name, None) for name in names}


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for saving next to outputs)."""
    return dataclasses.asdict(obj)
