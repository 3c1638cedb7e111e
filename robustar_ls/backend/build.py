"""The predictor ``robustar-ls serve`` uses, built once from its settings: the checkpoint's
holder, the image fetcher (:meth:`ImageFetcher.from_config`), the predictor's settings
(:meth:`PredictorSettings.from_config`), Mask R-CNN and the learned segmenter."""

from __future__ import annotations

import logging

from robustar_ls.backend.images import ImageFetcher
from robustar_ls.backend.maskrcnn_source import WITHOUT_MASKRCNN, start_maskrcnn
from robustar_ls.backend.model_holder import ModelHolder
from robustar_ls.backend.predictor import Predictor, PredictorSettings
from robustar_ls.backend.spurious_source import LearnedSegmenterHolder
from robustar_ls.config import ServeConfig
from robustar_ls.files import remove_stale_temp_files
from robustar_ls.models.maskrcnn import MaskRCNNSegmenter
from robustar_ls.models.spurious_segmenter import default_segmenter_path

log = logging.getLogger(__name__)


def load_maskrcnn(cfg: ServeConfig, predictor: Predictor | None = None) -> MaskRCNNSegmenter | None:
    """The serve settings' Mask R-CNN now, or None (the reason logged once). When its weights
    must first be downloaded, that happens in the background and the segmenter is handed to
    ``predictor`` when ready (:mod:`robustar_ls.backend.maskrcnn_source`)."""
    if not cfg.use_maskrcnn:
        log.warning(WITHOUT_MASKRCNN, "disabled by the settings (use_maskrcnn = false)")
        return None
    return start_maskrcnn(cfg.maskrcnn_config(), lambda seg: use_maskrcnn(predictor, seg))[0]


def use_maskrcnn(predictor: Predictor | None, segmenter: MaskRCNNSegmenter) -> None:
    """Serve ``segmenter`` from now on; predictions cached without it are made again."""
    if predictor is not None:
        predictor.cache.clear()
        predictor.segmenter = segmenter


def learned_segmenter(cfg: ServeConfig) -> LearnedSegmenterHolder | None:
    """The learned segmenter's holder: ``spurious_segmenter``, else the default file under
    ``data``; None when neither is set. The file need not exist yet (sync-train writes it)."""
    if cfg.spurious_segmenter:
        return LearnedSegmenterHolder(cfg.spurious_segmenter)
    if cfg.data:
        return LearnedSegmenterHolder(default_segmenter_path(cfg.data))
    return None


def build_predictor(cfg: ServeConfig, timing: dict[str, float] | None = None) -> Predictor:
    """The predictor ``robustar-ls serve`` uses: loads the checkpoint and the segmenter now."""
    for stale in remove_stale_temp_files(cfg.checkpoint):
        log.info("removed %s, left by a checkpoint write that was killed", stale.name)
    holder = ModelHolder(cfg.checkpoint, device=cfg.device, last_good_dir=cfg.last_good_dir())
    predictor = Predictor(
        holder,
        ImageFetcher.from_config(cfg),
        None,
        PredictorSettings.from_config(cfg),
        timing=timing,
        learned=learned_segmenter(cfg),
    )
    segmenter = load_maskrcnn(cfg, predictor)  # None while downloading: the thread sets it
    if segmenter is not None:
        predictor.segmenter = segmenter
    holder.load_initial()
    return predictor
