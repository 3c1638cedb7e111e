"""The ML backend's settings (``robustar-ls serve``): limits, Mask R-CNN, saliency, cache,
prefetch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Mask R-CNN (COCO) for the "Spurious" pre-annotation; README "Mask R-CNN" explains.

    Not the learned segmenter (:class:`~robustar_ls.config.SpuriousSegmenterConfig`)."""

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
    use_maskrcnn: bool = True  # False = no Mask R-CNN pre-annotation at all (was "segmenter")
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

    maskrcnn: MaskRCNNConfig = field(default_factory=MaskRCNNConfig)  # device, batch: ours
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)

    # flat names of the serve flags (and of older settings files) -> (nested config, field)
    ALIASES: ClassVar[dict[str, tuple[str, str]]] = {
        "maskrcnn_weights": ("maskrcnn", "weights"),
        "segmenter_weights": ("maskrcnn", "weights"),  # deprecated: maskrcnn_weights
        "score_threshold": ("maskrcnn", "score_threshold"),
        "saliency_method": ("saliency", "method"),
        "top_fraction": ("saliency", "top_fraction"),
    }
    # settings keys of older files -> their names now (read, never written)
    RENAMED: ClassVar[dict[str, str]] = {
        "segmentation": "maskrcnn",
        "segmenter": "use_maskrcnn",
    }

    def maskrcnn_config(self) -> MaskRCNNConfig:
        """Mask R-CNN's settings, with the backend's ``device`` and ``batch_size``."""
        return dataclasses.replace(self.maskrcnn, device=self.device, batch_size=self.batch_size)

    def saliency_config(self) -> SaliencyConfig:
        return self.saliency

    @property
    def maskrcnn_weights(self) -> str | None:
        return self.maskrcnn.weights

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
class PrefetchConfig:
    """Prefetch settings (``serve --prefetch N``; the ``[prefetch]`` section of a settings file).

    ``top``: the N most influential tasks get a prediction of each new model version (0 turns
    the prefetch off); ``chunk``: tasks per model call (a user's ``/predict`` waits for at most
    one chunk); ``poll``: seconds between checks for a new model version or request;
    ``retries``/``backoff``: a failed run is tried again that many times, after ``backoff``,
    ``2·backoff``, … seconds, then only on the next request or model version; ``influence``:
    with ``serve --data``, rerun influence for each new classifier version first
    (:mod:`robustar_ls.backend.influence_refresh`).
    """

    top: int = 100
    chunk: int = 4
    poll: float = 2.0
    retries: int = 3
    backoff: float = 30.0
    influence: bool = True
