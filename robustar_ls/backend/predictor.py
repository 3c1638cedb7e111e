"""Label Studio tasks in, predictions out: a thin translator over the model wrappers.

For each task of a ``/predict`` call, one prediction ``{"model_version", "score", "result"}``:

- a ``textarea`` result with the summary "Predicted: square (0.93) · True: circle · WRONG";
- a brush region "Spurious": everything Mask R-CNN does not see as an object (only when a
  segmenter is available; otherwise this is said once, at start-up, and omitted);
- a brush region "Model attention": the graded top salient pixels of Grad-CAM for the
  predicted class (Label Studio draws the alpha as opacity: a translucent heatmap).

All tasks of one call go through the classifier, the saliency explainer and the segmenter in
batches of ``batch_size``; the classifier sees images resized to the checkpoint's image size,
masks come back at each image's original size. Model outputs are cached per (model version,
image content) in a bounded LRU, so re-asking for a task costs no model call.

With ``context`` (Label Studio's smart tools), a key point gives the pixels within a colour
range of the clicked one, a rectangle the object inside it: one "Spurious" brush region.

The saliency heatmap PNG behind a task's ``$saliency`` URL is made on demand for the model
version being served and cached on disk per (model version, image).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from robustar_ls.backend.images import FetchedImage, ImageFetcher, ImageFetchError
from robustar_ls.backend.model_holder import ModelHolder, ServedModel
from robustar_ls.config import SaliencyConfig, ServeConfig
from robustar_ls.data.folders import SPLITS, image_to_tensor, normalize
from robustar_ls.explain.interactive import box_object_mask, colour_range_mask
from robustar_ls.explain.saliency import SaliencyExplainer, attention_mask, heatmap_png
from robustar_ls.labelstudio.brush import mask_to_rle
from robustar_ls.labelstudio.config import LabelConfigError, LabelConfigTags, find_tags
from robustar_ls.labelstudio.results import BrushRegion, Prediction, TextAreaResult
from robustar_ls.models.checkpoint import atomic_write_bytes, remove_stale_temp_files
from robustar_ls.models.segmenter import Segmenter, SegmenterUnavailable

log = logging.getLogger(__name__)

SPURIOUS = "Spurious"
ATTENTION = "Model attention"
STAGES = ("load", "classifier", "segmenter", "saliency", "encoding")


class TaskError(ValueError):
    """One task cannot be predicted (bad task data); its neighbours are unaffected."""


@dataclass(frozen=True)
class ImageOutputs:
    """What the models say about one image, independent of the label config (cacheable)."""

    probs: np.ndarray  # (num_classes,) softmax
    width: int
    height: int
    attention_rle: list[int]
    spurious_rle: list[int] | None  # None: no segmenter

    @property
    def predicted(self) -> int:
        return int(self.probs.argmax())


class LRUCache:
    """A small thread-safe LRU mapping (bounded by entry count)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Any, value: Any) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def resize_map(saliency: np.ndarray, width: int, height: int) -> np.ndarray:
    """A saliency map (h, w) in [0, 1] resized (bilinear) to ``width`` x ``height``."""
    if saliency.shape == (height, width):
        return saliency.astype(np.float32, copy=False)
    image = Image.fromarray(saliency.astype(np.float32), mode="F")
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(resized, 0.0, 1.0)


def images_to_batch(images: Sequence[Image.Image], image_size: int) -> torch.Tensor:
    """RGB images → the classifier's normalised ``(N, 3, S, S)`` batch.

    The same bilinear resize and ImageNet normalisation as ``image_to_tensor`` (training), with
    the arithmetic done once for the whole batch.
    """
    size = (image_size, image_size)
    arrays = [
        np.asarray(im if im.size == size else im.resize(size, Image.Resampling.BILINEAR))
        for im in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    return normalize(batch)


def summary_text(classes: Sequence[str], probs: np.ndarray, true_class: str | None) -> str:
    """``Predicted: square (0.93) · True: circle · WRONG``."""
    index = int(probs.argmax())
    text = f"Predicted: {classes[index]} ({float(probs[index]):.2f})"
    if not true_class:
        return text + " · True: unknown"
    verdict = "correct" if classes[index] == true_class else "WRONG"
    return f"{text} · True: {true_class} · {verdict}"


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
        segmenter_reason: str = "",
        timing: dict[str, float] | None = None,
    ) -> None:
        self.holder = holder
        self.fetcher = fetcher
        self.segmenter = segmenter
        self.segmenter_reason = segmenter_reason
        self.saliency = saliency or SaliencyConfig()
        self.batch_size = batch_size
        self.cache = LRUCache(cache_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.timing = timing
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
        return self.holder.current().version

    def tags_for(self, label_config: str | None) -> LabelConfigTags:
        """The tags of a label config (default config when None); LabelConfigError if unusable."""
        key = hashlib.sha256((label_config or "").encode()).hexdigest()
        tags = self._tags_cache.get(key)
        if tags is None:
            if label_config:
                tags = find_tags(label_config)
            else:
                from robustar_ls.labelstudio.config import default_label_config

                tags = find_tags(default_label_config())
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
        served = self.holder.current()
        if context and isinstance(context, dict) and context.get("result"):
            return [self._interactive(task, tags, context, served).to_dict() for task in tasks]
        return [p.to_dict() for p in self._predict_batch(tasks, tags, served)]

    def _predict_batch(
        self, tasks: Sequence[dict[str, Any]], tags: LabelConfigTags, served: ServedModel
    ) -> list[Prediction]:
        """Tasks in chunks of ``batch_size``: only one chunk's decoded images are in memory."""
        predictions: list[Prediction] = []
        for chunk in chunks(tasks, self.batch_size):
            predictions.extend(self._predict_chunk(chunk, tags, served))
        return predictions

    def _predict_chunk(
        self, tasks: Sequence[dict[str, Any]], tags: LabelConfigTags, served: ServedModel
    ) -> list[Prediction]:
        n = len(tasks)
        fetched: list[FetchedImage | None] = [None] * n
        outputs: list[ImageOutputs | None] = [None] * n
        with self._timed("load"):
            for i, task in enumerate(tasks):
                try:
                    fetched[i] = self.fetcher.fetch(self._image_ref(task, tags))
                except (ImageFetchError, TaskError) as err:
                    log.warning("task %s: no prediction: %s", _task_id(task), err)
                except Exception:  # never let one task's image fail the others
                    log.exception(
                        "task %s: no prediction: loading its image failed", _task_id(task)
                    )
        todo = []
        for i, item in enumerate(fetched):
            if item is None:
                continue
            cached = self.cache.get((served.version, item.identity))
            if cached is not None:
                outputs[i] = cached
            else:
                todo.append(i)
        if todo:
            images = [fetched[i] for i in todo]
            try:
                results = self._compute(served, images)
            except Exception:
                if len(todo) == 1:
                    log.exception(
                        "task %s: the models failed on its image", _task_id(tasks[todo[0]])
                    )
                    results = [None]
                else:
                    results = self._compute_one_by_one(served, images, [tasks[i] for i in todo])
            for i, item, result in zip(todo, images, results, strict=True):
                if result is not None:
                    outputs[i] = result
                    self.cache.put((served.version, item.identity), result)
        with self._timed("encoding"):
            return [
                self._prediction(task, tags, served, fetched[i], outputs[i])
                for i, task in enumerate(tasks)
            ]

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

    def _image_ref(self, task: Any, tags: LabelConfigTags) -> str:
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise TaskError("the task has no 'data' object")
        ref = task["data"].get(tags.image_value)
        if not isinstance(ref, str) or not ref:
            raise TaskError(
                f"task data has no image under ${tags.image_value} "
                f"(keys: {', '.join(sorted(task['data'])) or 'none'})"
            )
        return ref

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
        spurious: list[np.ndarray | None] = [None] * len(images)
        if self.segmenter is not None:
            with self._timed("segmenter"):
                spurious = list(self.segmenter.spurious_masks([item.image for item in images]))
        probs_np = probs.cpu().numpy()
        results = []
        with self._timed("encoding"):
            for k, item in enumerate(images):
                width, height = item.image.size
                saliency = resize_map(maps[k], width, height)
                attention = attention_mask(saliency, self.saliency.top_fraction)
                mask = spurious[k]
                results.append(
                    ImageOutputs(
                        probs=probs_np[k],
                        width=width,
                        height=height,
                        attention_rle=mask_to_rle(attention),
                        spurious_rle=None
                        if mask is None
                        else mask_to_rle(np.asarray(mask, dtype=np.uint8) * 255),
                    )
                )
        return results

    def _prediction(
        self,
        task: dict[str, Any],
        tags: LabelConfigTags,
        served: ServedModel,
        item: FetchedImage | None,
        out: ImageOutputs | None,
    ) -> Prediction:
        if item is None or out is None:
            return Prediction(model_version=served.version, score=None, result=[])
        result: list[Any] = []
        if tags.summary_textarea:
            text = summary_text(served.classes, out.probs, self._true_class(task, item, served))
            result.append(TextAreaResult(tags.summary_textarea, tags.image, text))
        labels = set(tags.brush_labels or ())
        if tags.brush and out.spurious_rle is not None and SPURIOUS in labels:
            result.append(
                BrushRegion(
                    tags.brush, tags.image, out.spurious_rle, SPURIOUS, out.width, out.height
                )
            )
        if tags.brush and ATTENTION in labels:
            result.append(
                BrushRegion(
                    tags.brush, tags.image, out.attention_rle, ATTENTION, out.width, out.height
                )
            )
        return Prediction(model_version=served.version, score=float(out.probs.max()), result=result)

    def _true_class(
        self, task: dict[str, Any], item: FetchedImage, served: ServedModel
    ) -> str | None:
        """From task data ``true_class``, else from ``…/<split>/<class>/<file>`` on disk."""
        value = task.get("data", {}).get("true_class")
        if isinstance(value, str) and value:
            return value
        if item.path is not None:
            parent = item.path.parent
            if parent.name in served.classes and parent.parent.name in SPLITS:
                return parent.name
        return None

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
            item = self.fetcher.fetch(self._image_ref(task, tags))
        except (ImageFetchError, TaskError) as err:
            log.warning("task %s: no interactive result: %s", _task_id(task), err)
            return empty
        image = item.image
        width, height = image.size
        rgb = np.asarray(image)
        add = np.zeros((height, width), dtype=bool)
        remove = np.zeros((height, width), dtype=bool)
        label = None
        for region in context.get("result") or []:
            try:
                mask, chosen = self._region_mask(region, image, rgb)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                log.warning("task %s: ignoring a context region: %s", _task_id(task), err)
                continue
            except Exception:  # e.g. the segmenter failing: this region only
                log.exception("task %s: a context region failed", _task_id(task))
                continue
            if mask is None:
                continue
            label = label or chosen
            if region.get("is_positive", True) in (False, 0, "false"):
                remove |= mask
            else:
                add |= mask
        mask = add & ~remove
        if not mask.any():
            return empty
        labels = list(tags.brush_labels or ())
        if label not in labels:
            label = SPURIOUS if SPURIOUS in labels or not labels else labels[0]
        with self._timed("encoding"):
            rle = mask_to_rle(mask.astype(np.uint8) * 255)
        region = BrushRegion(tags.brush, tags.image, rle, label, width, height)
        return Prediction(model_version=served.version, score=1.0, result=[region])

    def _region_mask(
        self, region: dict[str, Any], image: Image.Image, rgb: np.ndarray
    ) -> tuple[np.ndarray | None, str | None]:
        kind = region.get("type")
        value = region["value"]
        width, height = image.size
        labels = value.get(kind) or value.get("labels") or [None]
        chosen = labels[0] if isinstance(labels, list) and labels else None
        if kind == "keypointlabels":
            x = _clip(float(value["x"]) * width / 100.0, width)
            y = _clip(float(value["y"]) * height / 100.0, height)
            return colour_range_mask(rgb, x, y), chosen
        if kind == "rectanglelabels":
            # Pixel edges (x1, y1 exclusive); rounded so float noise never widens the box.
            x0 = round(float(value["x"]) * width / 100.0, 6)
            y0 = round(float(value["y"]) * height / 100.0, 6)
            x1 = round(x0 + float(value["width"]) * width / 100.0, 6)
            y1 = round(y0 + float(value["height"]) * height / 100.0, 6)
            box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            return box_object_mask(image, box, self.segmenter), chosen
        return None, None

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
            batch = image_to_tensor(item.image, served.image_size).unsqueeze(0).to(served.device)
            with torch.no_grad():
                predicted = served.model(batch).argmax(dim=1)
            maps = self._explainer(served).maps(batch, predicted)
        width, height = item.image.size
        png = heatmap_png(item.image, resize_map(maps[0], width, height))
        if cache_path is not None:
            self._prune_versions(cache_path.parent)
            atomic_write_bytes(cache_path, png)
        return png, served.version

    def _heatmap_path(self, version: str, image_ref: str) -> Path | None:
        if self.cache_dir is None:
            return None
        identity = image_ref
        local = self.fetcher.local_path(image_ref)
        if local is not None and local.is_file():
            stat = local.stat()
            identity = f"{local}:{stat.st_mtime_ns}:{stat.st_size}"
        name = hashlib.sha256(identity.encode()).hexdigest()[:32] + ".png"
        return self.cache_dir / "saliency" / _safe_name(version) / name

    def _prune_versions(self, version_dir: Path) -> None:
        if version_dir.is_dir():
            return
        root = version_dir.parent
        if not root.is_dir():
            return
        for other in root.iterdir():
            if other.is_dir() and other != version_dir:
                shutil.rmtree(other, ignore_errors=True)
                log.info("pruned saliency heatmaps of model version %s", other.name)


def _clip(value: float, size: int) -> int:
    return int(min(max(value, 0), size - 1))


def _safe_name(version: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in version) or "unversioned"


def _task_id(task: Any) -> str:
    return str(task.get("id", "?")) if isinstance(task, dict) else "?"


def build_predictor(cfg: ServeConfig, timing: dict[str, float] | None = None) -> Predictor:
    """The predictor ``robustar-ls serve`` uses: loads the checkpoint and the segmenter now."""
    for stale in remove_stale_temp_files(cfg.checkpoint):
        log.info("removed %s, left by a checkpoint write that was killed", stale.name)
    holder = ModelHolder(cfg.checkpoint, device=cfg.device, last_good_dir=cfg.last_good_dir())
    segmenter, reason = None, ""
    if not cfg.segmenter:
        reason = "disabled by the settings (segmenter = false)"
    else:
        try:
            segmenter = Segmenter.from_config(cfg.segmenter_config())
        except SegmenterUnavailable as err:
            reason = str(err)
    if segmenter is None:
        log.warning(
            "no Mask R-CNN segmenter: predictions carry no 'Spurious' pre-annotation and the "
            "rectangle tool uses its colour-based fallback. Reason: %s",
            reason,
        )
    predictor = Predictor(
        holder,
        ImageFetcher.from_config(cfg),
        segmenter,
        saliency=cfg.saliency_config(),
        batch_size=cfg.batch_size,
        cache_size=cfg.prediction_cache_size,
        cache_dir=cfg.resolved_cache_dir(),
        segmenter_reason=reason,
        timing=timing,
    )
    holder.load_initial()
    return predictor
