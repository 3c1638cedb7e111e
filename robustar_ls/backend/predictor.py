"""Label Studio tasks in, predictions out: a thin translator over the model wrappers.

For each task of a ``/predict`` call, one prediction ``{"model_version", "score", "result"}``:

- a ``textarea`` result with the summary "Predicted: square (0.93) · True: circle · WRONG";
- a brush region "Spurious": the learned spurious segmenter's mask, with its confidence as the
  region's score, when the dataset has one (:mod:`robustar_ls.backend.spurious_source`;
  its version joins the model version, so a retrained segmenter makes new predictions); else
  everything Mask R-CNN does not see as an object (only when a segmenter is available;
  otherwise this is said once, at start-up, and omitted). The summary names the source;
- a brush region "Model attention": the graded top salient pixels of Grad-CAM for the
  predicted class (Label Studio draws the alpha as opacity: a translucent heatmap).

All tasks of one call go through the classifier, the saliency explainer and the segmenter in
batches of ``batch_size``; the classifier sees images resized to the checkpoint's image size,
masks come back at each image's original size. Model outputs are cached per (model version,
image content) in a bounded LRU, so re-asking for a task costs no model call.

Requests are bounded (:mod:`robustar_ls.backend.limits`, :mod:`robustar_ls.backend.decoding`):
a task over a limit, or whose image is late or broken, gets a prediction with an ``error``.

With ``context`` (Label Studio's smart tools), a key point gives the pixels within a colour
range of the clicked one, a rectangle the object inside it: one "Spurious" brush region.

The saliency heatmap PNG behind a task's ``$saliency`` URL is made on demand for the model
version being served and cached on disk per (model version, image).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustar_ls.backend.cache import HeatmapCache, LRUCache
from robustar_ls.backend.decoding import PixelBudget
from robustar_ls.backend.fetching import TaskError, TaskFailure, fetch_images, image_ref
from robustar_ls.backend.fetching import task_id as _task_id
from robustar_ls.backend.images import FetchedImage, ImageFetcher, ImageFetchError
from robustar_ls.backend.interactive import brush_label, context_mask
from robustar_ls.backend.limits import RequestLimits, deferred, run_paced, upscale_mask
from robustar_ls.backend.model_holder import ModelHolder, ServedModel
from robustar_ls.backend.outputs import (
    ImageOutputs,
    image_outputs,
    summary_text,
    to_prediction,
    true_class,
)
from robustar_ls.backend.spurious_source import LearnedSegmenterHolder
from robustar_ls.config import SaliencyConfig
from robustar_ls.data.folders import images_to_batch
from robustar_ls.explain.saliency import SaliencyExplainer, heatmap_png, resize_map
from robustar_ls.labelstudio.brush import mask_to_rle
from robustar_ls.labelstudio.config import (
    LabelConfigError,
    LabelConfigTags,
    default_label_config,
    find_tags,
)
from robustar_ls.labelstudio.results import BrushRegion, Prediction
from robustar_ls.models.segmenter import Segmenter
from robustar_ls.models.spurious_segmenter import MASK_THRESHOLD, mask_confidence

log = logging.getLogger(__name__)

STAGES = ("load", "classifier", "segmenter", "saliency", "encoding")


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Predictor:
    """Turns Label Studio tasks into predictions with the served classifier.

    ``timing``: pass a dict to accumulate seconds per stage (:data:`STAGES`); ``None`` (the
    default) measures nothing.
    """

    def __init__(
        self,
        holder: ModelHolder,
        fetcher: ImageFetcher,
        segmenter: Segmenter | None = None,
        *,
        saliency: SaliencyConfig | None = None,
        batch_size: int = 16,
        cache_size: int = 512,
        cache_dir: str | Path | None = None,
        timing: dict[str, float] | None = None,
        request_deadline: float = 60.0,
        fetch_parallelism: int = 4,
        limits: RequestLimits | None = None,
        learned: LearnedSegmenterHolder | None = None,
    ) -> None:
        self.holder = holder
        self.learned = learned
        self.fetcher = fetcher
        self.segmenter = segmenter
        self.saliency = saliency or SaliencyConfig()
        self.batch_size = batch_size
        self.cache = LRUCache(cache_size)
        self.heatmaps = HeatmapCache(cache_dir) if cache_dir else None
        self.timing = timing
        self.request_deadline = request_deadline
        self.fetch_parallelism = fetch_parallelism
        self.limits = limits or RequestLimits()
        self._tags_cache = LRUCache(8)
        self._compute_lock = threading.Lock()  # saliency hooks are per model: one at a time
        holder.prepare = self._prepare

    # -- set-up -------------------------------------------------------------------------

    def _prepare(self, served: ServedModel) -> None:
        """Build the per-model helpers before the model is published."""
        served.extras["explainer"] = SaliencyExplainer(served.model, self.saliency)

    def _explainer(self, served: ServedModel) -> SaliencyExplainer:
        if "explainer" not in served.extras:  # a holder loaded before this predictor existed
            self._prepare(served)
        return served.extras["explainer"]

    @property
    def model_version(self) -> str:
        return self.served().version

    def served(self) -> ServedModel:
        """The served classifier, with the learned segmenter (if any) serving with it."""
        served = self.holder.current()
        learned = self.learned.current() if self.learned is not None else None
        return served if learned is None else dataclasses.replace(served, spurious=learned)

    def tags_for(self, label_config: str | None) -> LabelConfigTags:
        """The tags of a label config (default config when None); LabelConfigError if unusable."""
        key = hashlib.sha256((label_config or "").encode()).hexdigest()
        tags = self._tags_cache.get(key)
        if tags is None:
            tags = find_tags(label_config or default_label_config())
            if not tags.image or not tags.image_value:
                raise LabelConfigError(
                    "the label config has no <Image> tag with a value like $image; use "
                    "label_config/robustar.xml"
                )
            self._tags_cache.put(key, tags)
        return tags

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        if self.timing is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timing[stage] = self.timing.get(stage, 0.0) + time.perf_counter() - start

    # -- /predict -----------------------------------------------------------------------

    def predict(
        self,
        tasks: Sequence[dict[str, Any]],
        label_config: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """One prediction dict per task, in order. Raises LabelConfigError for a bad config."""
        tags = self.tags_for(label_config)
        served = self.served()
        accepted, refused = self.limits.split_tasks(tasks, served.version)
        if context and isinstance(context, dict) and context.get("result"):
            done = [self._interactive(task, tags, context, served) for task in accepted]
        else:
            done = self._predict_batch(accepted, tags, served)
        return self.limits.bound_response([p.to_dict() for p in done + refused])

    def _predict_batch(
        self, tasks: Sequence[dict[str, Any]], tags: LabelConfigTags, served: ServedModel
    ) -> list[Prediction]:
        """Tasks in chunks of at most ``batch_size``, paced to the request's deadline (the rest
        deferred); images fetched in parallel, a late or broken one gets an ``error``."""
        deadline = time.monotonic() + self.request_deadline
        budget = PixelBudget(self.limits.max_pixels)
        predictions, done = run_paced(
            tasks,
            self.batch_size,
            deadline,
            lambda chunk: self._predict_chunk(chunk, tags, served, deadline, budget),
        )
        rest = len(tasks) - done
        return predictions + deferred(served.version, rest, len(tasks), self.request_deadline)

    def _predict_chunk(
        self,
        tasks: Sequence[dict[str, Any]],
        tags: LabelConfigTags,
        served: ServedModel,
        deadline: float,
        budget: PixelBudget,
    ) -> list[Prediction]:
        with self._timed("load"):
            fetched = fetch_images(
                self.fetcher,
                tasks,
                tags.image_value,
                deadline,
                self.request_deadline,
                self.fetch_parallelism,
                budget,
            )
        outputs = self._outputs(served, fetched, tasks)
        with self._timed("encoding"):
            return [
                self._prediction(task, tags, served, fetched[i], outputs[i])
                for i, task in enumerate(tasks)
            ]

    def _outputs(
        self,
        served: ServedModel,
        fetched: Sequence[FetchedImage | TaskFailure],
        tasks: Sequence[Any],
    ) -> list[ImageOutputs | None]:
        """Each fetched image's outputs: from the cache, else computed in one batch."""
        outputs: list[ImageOutputs | None] = [None] * len(fetched)
        todo = []
        for i, item in enumerate(fetched):
            if isinstance(item, TaskFailure):
                continue
            outputs[i] = self.cache.get((served.version, item.identity))
            if outputs[i] is None:
                todo.append(i)
        if not todo:
            return outputs
        images = [fetched[i] for i in todo]
        try:
            results = self._compute(served, images)
        except Exception:
            if len(todo) == 1:
                log.exception("task %s: the models failed on its image", _task_id(tasks[todo[0]]))
                results = [None]
            else:
                results = self._compute_one_by_one(served, images, [tasks[i] for i in todo])
        for i, item, result in zip(todo, images, results, strict=True):
            if result is not None:
                outputs[i] = result
                self.cache.put((served.version, item.identity), result)
        return outputs

    def _compute_one_by_one(
        self, served: ServedModel, images: Sequence[FetchedImage], tasks: Sequence[Any]
    ) -> list[ImageOutputs | None]:
        """After a batch failed: each image alone, so one bad image fails only its own task."""
        log.warning("a batch of %d images failed; retrying them one by one", len(images))
        results: list[ImageOutputs | None] = []
        for item, task in zip(images, tasks, strict=True):
            try:
                results.extend(self._compute(served, [item]))
            except Exception:
                log.exception("task %s: the models failed on its image", _task_id(task))
                results.append(None)
        return results

    def _compute(self, served: ServedModel, images: Sequence[FetchedImage]) -> list[ImageOutputs]:
        """Classifier, saliency and segmenter on a batch of images."""
        with self._compute_lock:
            with self._timed("load"):  # decoding + resizing + normalising = image load
                batch = images_to_batch([item.image for item in images], served.image_size)
                batch = batch.to(served.device)
            with self._timed("classifier"):
                with torch.no_grad():
                    probs = torch.softmax(served.model(batch).float(), dim=1)
                predicted = probs.argmax(dim=1)
            with self._timed("saliency"):
                maps = self._explainer(served).maps(batch, predicted)
        with self._timed("segmenter"):
            spurious, scores, source = self._spurious(served, images)
        probs_np = probs.cpu().numpy()
        with self._timed("encoding"):
            return [
                image_outputs(
                    probs_np[k],
                    resize_map(maps[k], item.original_size),
                    upscale_mask(spurious[k], item.original_size),
                    self.saliency.top_fraction,
                    scores[k],
                    source,
                )
                for k, item in enumerate(images)
            ]

    def _spurious(
        self, served: ServedModel, images: Sequence[FetchedImage]
    ) -> tuple[list[np.ndarray | None], list[float | None], str]:
        """Spurious masks, their confidences and their source: the learned segmenter serving
        with ``served``, else Mask R-CNN's complement, else none."""
        none: list[Any] = [None] * len(images)
        pictures = [item.image for item in images]
        if served.spurious is not None:
            probs = served.spurious.predict_proba(pictures)
            scores = [round(mask_confidence(p), 4) for p in probs]
            masks = [p >= MASK_THRESHOLD for p in probs]
            return list(masks), list(scores), f"learned segmenter {served.spurious.version}"
        if self.segmenter is not None:
            return list(self.segmenter.spurious_masks(pictures)), none, "Mask R-CNN"
        return none, none, ""

    def _prediction(
        self,
        task: dict[str, Any],
        tags: LabelConfigTags,
        served: ServedModel,
        item: FetchedImage | TaskFailure,
        out: ImageOutputs | None,
    ) -> Prediction:
        if isinstance(item, TaskFailure):
            return Prediction(served.version, score=None, result=[], error=item.message)
        if out is None:
            error = "the models failed on this task's image; see the backend's log"
            return Prediction(served.version, score=None, result=[], error=error)
        summary = None
        if tags.summary_textarea:
            truth = true_class(task.get("data", {}), item.path, served.classes)
            summary = summary_text(served.classes, out.probs, truth, out.spurious_source)
        return to_prediction(out, tags, served.version, summary)

    # -- interactive tools ----------------------------------------------------------------

    def _interactive(
        self,
        task: dict[str, Any],
        tags: LabelConfigTags,
        context: dict[str, Any],
        served: ServedModel,
    ) -> Prediction:
        """A key point → colour-range mask; a rectangle → object mask; as one brush region."""
        empty = Prediction(model_version=served.version, score=None, result=[])
        if not tags.brush:
            log.warning("interactive request, but the label config has no <BrushLabels> tag")
            return empty
        try:
            item = self.fetcher.fetch(image_ref(task, tags.image_value))
        except (ImageFetchError, TaskError) as err:
            log.warning("task %s: no interactive result: %s", _task_id(task), err)
            return empty
        regions = context.get("result") or []
        mask, chosen = context_mask(item.image, regions, self.segmenter, _task_id(task))
        if not mask.any():
            return empty
        label = brush_label(chosen, list(tags.brush_labels or ()))
        with self._timed("encoding"):
            mask = upscale_mask(mask, item.original_size)
            rle = mask_to_rle(mask.astype(np.uint8) * 255)
        width, height = item.original_size
        region = BrushRegion(tags.brush, tags.image, rle, label, width, height)
        return Prediction(model_version=served.version, score=1.0, result=[region])

    # -- saliency heatmap PNG ------------------------------------------------------------

    def saliency_png(self, image_ref: str) -> tuple[bytes, str]:
        """The heatmap PNG of ``image_ref`` for the served model, and its model version.

        Cached on disk under ``<cache_dir>/saliency/<model version>/``; older versions' folders
        are pruned when a new version writes its first file.
        """
        served = self.holder.current()
        cache_path = self._heatmap_path(served.version, image_ref)
        if cache_path is not None and cache_path.is_file():
            return cache_path.read_bytes(), served.version
        item = self.fetcher.fetch(image_ref)
        with self._compute_lock:
            batch = images_to_batch([item.image], served.image_size).to(served.device)
            with torch.no_grad():
                predicted = served.model(batch).argmax(dim=1)
            maps = self._explainer(served).maps(batch, predicted)
        png = heatmap_png(item.image, resize_map(maps[0], item.image.size))
        if cache_path is not None and self.heatmaps is not None:
            self.heatmaps.put(cache_path, png)
        return png, served.version

    def _heatmap_path(self, version: str, image_ref: str) -> Path | None:
        if self.heatmaps is None:
            return None
        identity = image_ref
        local = self.fetcher.local_path(image_ref)
        if local is not None and local.is_file():
            stat = local.stat()
            identity = f"{local}:{stat.st_mtime_ns}:{stat.st_size}"
        return self.heatmaps.path(version, identity)
