"""Grad-CAM of the served classifier: one explainer per loaded model, one computation at a time,
and the heatmap PNG behind a task's ``$saliency`` URL.

The explainer's hooks sit on the model itself, so every pass through a served model (a
``/predict`` batch, a PNG) holds :attr:`Heatmaps.lock`. The PNG is made on demand for the model
version being served and cached on disk per (model version, image) under
``<cache_dir>/saliency/<model version>/`` (:class:`~robustar_ls.backend.cache.HeatmapCache`:
older versions' folders are pruned when a new version writes its first file).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from robustar_ls.backend.cache import HeatmapCache
from robustar_ls.backend.images import ImageFetcher
from robustar_ls.backend.model_holder import ServedModel
from robustar_ls.config import SaliencyConfig
from robustar_ls.data.tensors import images_to_batch
from robustar_ls.explain.saliency import SaliencyExplainer, heatmap_png, resize_map


class Heatmaps:
    """Grad-CAM maps and heatmap PNGs for the served models (see the module doc)."""

    def __init__(self, cfg: SaliencyConfig, cache_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        self.cache = HeatmapCache(cache_dir) if cache_dir else None
        self.lock = threading.Lock()  # the explainer's hooks are per model: one pass at a time

    def prepare(self, served: ServedModel) -> None:
        """Build the model's explainer (a :class:`~robustar_ls.backend.model_holder.ModelHolder`
        calls this before it publishes a freshly loaded model)."""
        served.extras["explainer"] = SaliencyExplainer(served.model, self.cfg)

    def maps(self, served: ServedModel, batch: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
        """Grad-CAM maps of ``batch`` for ``classes`` (call it holding :attr:`lock`)."""
        if "explainer" not in served.extras:  # a holder loaded before this predictor existed
            self.prepare(served)
        return served.extras["explainer"].maps(batch, classes)

    def png(self, served: ServedModel, fetcher: ImageFetcher, image_ref: str) -> bytes:
        """The heatmap PNG of ``image_ref`` for the predicted class of ``served``."""
        cache_path = self._path(served.version, fetcher, image_ref)
        if cache_path is not None and cache_path.is_file():
            return cache_path.read_bytes()
        item = fetcher.fetch(image_ref)
        with self.lock:
            batch = images_to_batch([item.image], served.image_size).to(served.device)
            with torch.no_grad():
                predicted = served.model(batch).argmax(dim=1)
            maps = self.maps(served, batch, predicted)
        png = heatmap_png(item.image, resize_map(maps[0], item.image.size))
        if cache_path is not None and self.cache is not None:
            self.cache.put(cache_path, png)
        return png

    def _path(self, version: str, fetcher: ImageFetcher, image_ref: str) -> Path | None:
        """The cached PNG's path: named by a local file's path, mtime and size, else the ref."""
        if self.cache is None:
            return None
        identity = image_ref
        local = fetcher.local_path(image_ref)
        if local is not None and local.is_file():
            stat = local.stat()
            identity = f"{local}:{stat.st_mtime_ns}:{stat.st_size}"
        return self.cache.path(version, identity)
