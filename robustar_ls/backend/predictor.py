"""``/predict``: Label Studio tasks in, one prediction per task out, read top to bottom.

1. :meth:`Predictor.predict`: the label config's tags, the served model (the classifier, and
   the learned segmenter serving with it when there is one), the request's bounds
   (:mod:`robustar_ls.backend.limits`: a task beyond one gets a prediction with an ``error``).
   With a ``context`` (Label Studio's smart tools) each task goes to
   :mod:`robustar_ls.backend.interactive` instead.
2. :meth:`Predictor._predict_batch`: chunks of at most ``batch_size`` tasks, paced to end
   before the request's deadline; the tasks left then are deferred
   (:mod:`robustar_ls.backend.pacing`).
3. :meth:`Predictor._predict_chunk`: the chunk's images, fetched in parallel
   (:mod:`robustar_ls.backend.fetching`: a late or broken one gets an ``error``); their model
   outputs; one prediction per task.
4. :meth:`Predictor._outputs`: from the output cache (per model version and image content,
   :class:`~robustar_ls.backend.cache.OutputCache`), the others in one batch through
   :meth:`Predictor._compute` (one by one after the batch failed, so a bad image fails only its
   own task): the classifier's softmax on the image resized to the checkpoint's size, Grad-CAM
   for the predicted class (:mod:`robustar_ls.backend.heatmaps`) and the spurious mask
   (:meth:`Predictor._spurious`), masks brought to the image's displayed size.
5. :meth:`Predictor._prediction`: the outputs as Label Studio results
   (:mod:`robustar_ls.backend.outputs`):

   - a ``textarea``: "Predicted: square (0.93) · True: circle · WRONG · Spurious: Mask R-CNN";
   - a brush region "Spurious": the learned spurious segmenter's mask, with its confidence as
     the region's score, when the dataset has one (:mod:`robustar_ls.backend.spurious_source`;
     its version joins the model version, so a retrained segmenter makes new predictions);
     else everything Mask R-CNN does not see as an object; none without a segmenter (said
     once, at start-up);
   - a brush region "Model attention": the graded top salient pixels of Grad-CAM (Label Studio
     draws the alpha as opacity: a translucent heatmap).

The heatmap PNG behind a task's ``$saliency`` URL is :meth:`Predictor.saliency_png`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustar_ls.backend.cache import LRUCache, OutputCache
from robustar_ls.backend.decoding import PixelBudget
from robustar_ls.backend.fetching import TaskFailure, fetch_images, task_id
from robustar_ls.backend.heatmaps import Heatmaps
from robustar_ls.backend.images import FetchedImage, ImageFetcher
from robustar_ls.backend.interactive import interactive_prediction
from robustar_ls.backend.limits import RequestLimits
from robustar_ls.backend.model_holder import ModelHolder, ServedModel
from robustar_ls.backend.outputs import (
    ImageOutputs,
    image_outputs,
    summary_text,
    to_prediction,
    true_class,
    upscale_mask,
)
from robustar_ls.backend.pacing import STAGES, Deadline, StageTimer, deferred, run_paced
from robustar_ls.backend.spurious_source import LearnedSegmenterHolder
from robustar_ls.config import SaliencyConfig, ServeConfig
from robustar_ls.data.tensors import images_to_batch
from robustar_ls.explain.saliency import resize_map
from robustar_ls.labelstudio.config import (
    LabelConfigError,
    LabelConfigTags,
    default_label_config,
    find_tags,
)
from robustar_ls.labelstudio.results import Prediction
from robustar_ls.models.maskrcnn import MaskRCNNSegmenter
from robustar_ls.models.spurious_segmenter import MASK_THRESHOLD, mask_confidence

__all__ = ["STAGES", "PredictRequest", "Predictor", "PredictorSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictorSettings:
    """How ``/predict`` runs; built once from the serve settings (:meth:`from_config`)."""

    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    batch_size: int = 16  # tasks per model call
    cache_size: int = 512  # images whose model outputs are kept in memory
    cache_dir: Path | None = None  # saliency PNGs are cached under it (None: not cached)
    request_deadline: float = 60.0  # seconds; the tasks left then are deferred
    fetch_parallelism: int = 4  # image downloads at a time
    limits: RequestLimits = field(default_factory=RequestLimits)

    @classmethod
    def from_config(cls, cfg: ServeConfig) -> PredictorSettings:
        limits = RequestLimits(
            cfg.max_tasks_per_request, cfg.max_request_pixels, cfg.max_response_bytes
        )
        return cls(
            saliency=cfg.saliency_config(),
            batch_size=cfg.batch_size,
            cache_size=cfg.prediction_cache_size,
            cache_dir=cfg.resolved_cache_dir(),
            request_deadline=cfg.request_deadline,
            fetch_parallelism=cfg.fetch_parallelism,
            limits=limits,
        )


@dataclass(frozen=True)
class PredictRequest:
    """What one ``/predict`` fixes for all its tasks."""

    tags: LabelConfigTags
    served: ServedModel
    deadline: Deadline
    budget: PixelBudget  # the decoded pixels its images may still take


class Predictor:
    """Turns Label Studio tasks into predictions with the served classifier.

    ``settings``: :class:`PredictorSettings` (the defaults when None); ``segmenter``: Mask
    R-CNN or None (set later when its weights arrive); ``learned``: the learned spurious
    segmenter's holder, preferred to Mask R-CNN when it holds one; ``timing``: a dict to add up
    seconds per stage (:data:`STAGES`), None (default) measures nothing.
    """

    def __init__(
        self,
        holder: ModelHolder,
        fetcher: ImageFetcher,
        segmenter: MaskRCNNSegmenter | None = None,
        settings: PredictorSettings | None = None,
        *,
        timing: dict[str, float] | None = None,
        learned: LearnedSegmenterHolder | None = None,
    ) -> None:
        self.holder = holder
        self.fetcher = fetcher
        self.segmenter = segmenter
        self.learned = learned
        self.settings = settings or PredictorSettings()
        self.timer = StageTimer(timing)
        self.cache = OutputCache(self.settings.cache_size)
        self.heatmaps = Heatmaps(self.settings.saliency, self.settings.cache_dir)
        self._tags = LRUCache(8)
        holder.prepare = self.heatmaps.prepare

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
        tags = self._tags.get(key)
        if tags is None:
            tags = find_tags(label_config or default_label_config())
            if not tags.image or not tags.image_value:
                raise LabelConfigError(
                    "the label config has no <Image> tag with a value like $image; use "
                    "label_config/robustar.xml"
                )
            self._tags.put(key, tags)
        return tags

    def saliency_png(self, image_ref: str) -> tuple[bytes, str]:
        """The heatmap PNG of ``image_ref`` for the served classifier, and its model version."""
        served = self.holder.current()
        return self.heatmaps.png(served, self.fetcher, image_ref), served.version

    # -- /predict, top to bottom --------------------------------------------------------

    def predict(
        self,
        tasks: Sequence[dict[str, Any]],
        label_config: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """One prediction dict per task, in order. Raises LabelConfigError for a bad config."""
        tags = self.tags_for(label_config)
        served = self.served()
        limits = self.settings.limits
        accepted, refused = limits.split_tasks(tasks, served.version)
        regions = context.get("result") if isinstance(context, dict) else None
        if regions:  # Label Studio's smart tools
            done = [self._interactive(task, regions, tags, served) for task in accepted]
        else:
            done = self._predict_batch(accepted, tags, served)
        return limits.bound_response([p.to_dict() for p in done + refused])

    def _interactive(
        self, task: dict[str, Any], regions: list[Any], tags: LabelConfigTags, served: ServedModel
    ) -> Prediction:
        """The context's regions as one brush region (:mod:`robustar_ls.backend.interactive`)."""
        return interactive_prediction(
            task, regions, tags, served.version,
            fetcher=self.fetcher, segmenter=self.segmenter, timer=self.timer,
        )  # fmt: skip

    def _predict_batch(
        self, tasks: Sequence[dict[str, Any]], tags: LabelConfigTags, served: ServedModel
    ) -> list[Prediction]:
        """The tasks in chunks paced to the request's deadline; the rest deferred."""
        settings = self.settings
        deadline = Deadline.after(settings.request_deadline)
        request = PredictRequest(tags, served, deadline, PixelBudget(settings.limits.max_pixels))
        predictions, done = run_paced(
            tasks, settings.batch_size, deadline, lambda chunk: self._predict_chunk(chunk, request)
        )
        rest = len(tasks) - done
        return predictions + deferred(served.version, rest, len(tasks), deadline.seconds)

    def _predict_chunk(
        self, tasks: Sequence[dict[str, Any]], request: PredictRequest
    ) -> list[Prediction]:
        """Images (fetched in parallel) → model outputs → one prediction per task."""
        with self.timer("load"):
            fetched = fetch_images(
                self.fetcher,
                tasks,
                request.tags.image_value,
                request.deadline,
                self.settings.fetch_parallelism,
                request.budget,
            )
        outputs = self._outputs(request.served, fetched, tasks)
        with self.timer("encoding"):
            return [
                self._prediction(task, request, fetched[i], outputs[i])
                for i, task in enumerate(tasks)
            ]

    def _outputs(
        self,
        served: ServedModel,
        fetched: Sequence[FetchedImage | TaskFailure],
        tasks: Sequence[Any],
    ) -> list[ImageOutputs | None]:
        """Each fetched image's outputs: cached, else computed with the others in one batch."""
        images = [None if isinstance(item, TaskFailure) else item for item in fetched]

        def compute(todo: list[int]) -> list[ImageOutputs | None]:
            try:
                return list(self._compute(served, [images[i] for i in todo]))
            except Exception:
                if len(todo) == 1:
                    log.exception(
                        "task %s: the models failed on its image", task_id(tasks[todo[0]])
                    )
                    return [None]
                log.warning("a batch of %d images failed; retrying them one by one", len(todo))
            return [self._compute_alone(served, images[i], tasks[i]) for i in todo]

        return self.cache.outputs(served.version, images, compute)

    def _compute_alone(
        self, served: ServedModel, image: FetchedImage, task: Any
    ) -> ImageOutputs | None:
        """One image after its batch failed: None when it fails alone too (logged)."""
        try:
            return self._compute(served, [image])[0]
        except Exception:
            log.exception("task %s: the models failed on its image", task_id(task))
            return None

    def _compute(self, served: ServedModel, images: Sequence[FetchedImage]) -> list[ImageOutputs]:
        """Classifier, Grad-CAM and spurious masks on a batch of images."""
        with self.heatmaps.lock:
            with self.timer("load"):  # decoding + resizing + normalising = image load
                batch = images_to_batch([item.image for item in images], served.image_size)
                batch = batch.to(served.device)
            with self.timer("classifier"), torch.no_grad():
                probs = torch.softmax(served.model(batch).float(), dim=1)
            with self.timer("saliency"):
                maps = self.heatmaps.maps(served, batch, probs.argmax(dim=1))
        with self.timer("segmenter"):
            spurious, scores, source = self._spurious(served, images)
        probs_np = probs.cpu().numpy()
        with self.timer("encoding"):
            return [
                image_outputs(
                    probs_np[k],
                    resize_map(maps[k], item.original_size),
                    upscale_mask(spurious[k], item.original_size),
                    self.settings.saliency.top_fraction,
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
        request: PredictRequest,
        item: FetchedImage | TaskFailure,
        out: ImageOutputs | None,
    ) -> Prediction:
        """One task's prediction: its outputs as results, or the error that stopped them."""
        served, tags = request.served, request.tags
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
