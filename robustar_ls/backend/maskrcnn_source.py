"""Mask R-CNN for ``serve``: loaded at start-up when its weights are there, else downloaded in
the background, the way torchvision does it, and handed over when ready.

:func:`start_maskrcnn` never delays start-up: when the COCO weights are neither at
``--maskrcnn-weights`` nor in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), it returns
None at once and a daemon thread downloads torchvision's
``MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1`` file into the hub cache (short socket timeout,
progress in the log, atomic; one download per machine: gunicorn workers take turns on a lock
beside the file and the later ones find it there, :mod:`robustar_ls.models.weights_download`),
loads it and calls ``on_ready(segmenter)``. Nothing is downloaded when ``offline`` is set or
when an explicit ``weights`` path is given. Any failure is one log line; the backend serves
everything else without the Mask R-CNN "Spurious" pre-annotation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from robustar_ls.config import MaskRCNNConfig
from robustar_ls.models.maskrcnn import (
    MaskRCNNSegmenter,
    MaskRCNNUnavailable,
    coco_weights_url,
    weights_path,
)
from robustar_ls.models.weights_download import DownloadFailed, fetch_once

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds per socket operation: an unreachable hub fails fast
WITHOUT_MASKRCNN = (
    "no Mask R-CNN segmenter: without a learned spurious segmenter predictions carry no "
    "'Spurious' pre-annotation, and the rectangle tool uses its colour-based fallback. "
    "Reason: %s"
)


def start_maskrcnn(
    cfg: MaskRCNNConfig,
    on_ready: Callable[[MaskRCNNSegmenter], None],
    *,
    url: str | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> tuple[MaskRCNNSegmenter | None, threading.Thread | None]:
    """The segmenter now (or None), and the background download's thread (or None).

    Loads now when the weights file exists, when ``cfg.weights`` names a file (never
    downloaded over) or when ``cfg.offline``; otherwise starts the download of ``url``
    (default: torchvision's COCO weights) into the hub cache and returns ``(None, thread)``.
    """
    path = weights_path(cfg)
    if path.is_file() or cfg.weights or cfg.offline:
        try:
            return MaskRCNNSegmenter.from_config(cfg), None
        except MaskRCNNUnavailable as err:
            offline = " (offline: nothing is downloaded)" if cfg.offline else ""
            log.warning(WITHOUT_MASKRCNN, f"{err}{offline}")
            return None, None
    url = url or coco_weights_url()
    log.info(
        "Mask R-CNN weights are not in %s yet: downloading %s in the background; the 'Spurious' "
        "pre-annotation from Mask R-CNN starts once they are there (--offline to never download)",
        path,
        url,
    )
    thread = threading.Thread(
        target=_fetch_and_load,
        args=(cfg, url, timeout, on_ready),
        name="maskrcnn-weights",
        daemon=True,
    )
    thread.start()
    return None, thread


def _fetch_and_load(
    cfg: MaskRCNNConfig, url: str, timeout: float, on_ready: Callable[[MaskRCNNSegmenter], None]
) -> None:
    path = weights_path(cfg)
    try:
        if fetch_once(url, path, timeout=timeout):
            log.info("Mask R-CNN weights downloaded to %s", path)
        segmenter = MaskRCNNSegmenter.from_config(cfg)
    except (DownloadFailed, MaskRCNNUnavailable) as err:
        log.warning(WITHOUT_MASKRCNN, err)
        return
    on_ready(segmenter)
    log.info("Mask R-CNN is ready: predictions now carry its 'Spurious' pre-annotation")
