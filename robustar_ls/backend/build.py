"""The predictor ``robustar-ls serve`` uses, built from its settings (checkpoint, segmenter,
image fetcher, limits)."""

from __future__ import annotations

import logging

from robustar_ls.backend.images import ImageFetcher
from robustar_ls.backend.limits import RequestLimits
from robustar_ls.backend.model_holder import ModelHolder
from robustar_ls.backend.predictor import Predictor
from robustar_ls.config import ServeConfig
from robustar_ls.files import remove_stale_temp_files
from robustar_ls.models.segmenter import Segmenter, SegmenterUnavailable

log = logging.getLogger(__name__)


def load_segmenter(cfg: ServeConfig) -> Segmenter | None:
    """The serve settings' Mask R-CNN, or None (with the reason logged once, at start-up)."""
    if not cfg.segmenter:
        reason = "disabled by the settings (segmenter = false)"
    else:
        try:
            return Segmenter.from_config(cfg.segmenter_config())
        except SegmenterUnavailable as err:
            reason = str(err)
    log.warning(
        "no Mask R-CNN segmenter: predictions carry no 'Spurious' pre-annotation and the "
        "rectangle tool uses its colour-based fallback. Reason: %s",
        reason,
    )
    return None


def build_predictor(cfg: ServeConfig, timing: dict[str, float] | None = None) -> Predictor:
    """The predictor ``robustar-ls serve`` uses: loads the checkpoint and the segmenter now."""
    for stale in remove_stale_temp_files(cfg.checkpoint):
        log.info("removed %s, left by a checkpoint write that was killed", stale.name)
    holder = ModelHolder(cfg.checkpoint, device=cfg.device, last_good_dir=cfg.last_good_dir())
    predictor = Predictor(
        holder,
        ImageFetcher.from_config(cfg),
        load_segmenter(cfg),
        saliency=cfg.saliency_config(),
        batch_size=cfg.batch_size,
        cache_size=cfg.prediction_cache_size,
        cache_dir=cfg.resolved_cache_dir(),
        timing=timing,
        request_deadline=cfg.request_deadline,
        fetch_parallelism=cfg.fetch_parallelism,
        limits=RequestLimits(
            cfg.max_tasks_per_request, cfg.max_request_pixels, cfg.max_response_bytes
        ),
    )
    holder.load_initial()
    return predictor
