"""Mask R-CNN segmenter: what is the object, and what is everything else (the spurious part).

torchvision's ``maskrcnn_resnet50_fpn_v2`` with its COCO weights, read from a given file or
from the torch hub cache (where ``robustar-ls serve`` downloads them, in the background:
:mod:`robustar_ls.backend.maskrcnn_source`). :meth:`MaskRCNNSegmenter.from_config` itself never
downloads: without the weights it raises :class:`MaskRCNNUnavailable` saying where it looked
and how to provide them. The model is never run with random weights.

Speed on CPU (:func:`apply_speed_settings`): the defaults of :class:`MaskRCNNConfig` run the
model at 512 px with 300/100 RPN proposals and 10 detections instead of COCO's 800 px,
1000/1000 and 100: 4.3x faster on CPU (bench/README.md, "bench_predict"). The loaded
model's batch norms are folded into its convolutions (:func:`fuse_conv_bn`, exact).

``MaskRCNNSegmenter(model, cfg)`` takes any module with torchvision's detection interface (a list of
``3xHxW`` float tensors in ``[0, 1]`` in, a list of dicts with ``boxes``, ``scores``,
``labels`` and ``masks`` out), so tests hand it a tiny fake.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from robustar_ls.config import MaskRCNNConfig
from robustar_ls.data.regions import pixel_box, remove_specks
from robustar_ls.errors import RobustarError
from robustar_ls.models.fuse_bn import fuse_conv_bn
from robustar_ls.models.weights_download import hub_checkpoint_path
from robustar_ls.models.zoo import default_device

log = logging.getLogger(__name__)

COCO_NUM_CLASSES = 91
_CLASS_LOGITS_KEY = "roi_heads.box_predictor.cls_score.weight"


class MaskRCNNUnavailable(RobustarError, RuntimeError):
    """No usable Mask R-CNN weights; the message says where they were looked for and the fix."""


def coco_weights_url() -> str:
    """Where torchvision publishes the COCO weights (for the user to fetch; never fetched here)."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights

    return MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url


def hub_cache_weights_path() -> Path:
    """The file torchvision itself would load the COCO weights from (``torch.hub`` cache)."""
    return hub_checkpoint_path(coco_weights_url())


def _how_to_provide() -> str:
    return (
        "robustar-ls serve downloads them there by itself unless --offline. Or download "
        f"{coco_weights_url()} on a machine with internet access and copy it to "
        f"{hub_cache_weights_path()}, or pass --maskrcnn-weights PATH (settings: "
        f"maskrcnn.weights) pointing at it or at any maskrcnn_resnet50_fpn_v2 state_dict."
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A Mask R-CNN state_dict from ``path``: a bare state_dict or a checkpoint dict holding one.

    Checkpoint dicts as written by torchvision's detection reference (``{"model": ...,
    "args": Namespace, ...}``) are accepted; pickled modules are not (only tensors are loaded).
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises a variety of errors for non-checkpoint files
        raise MaskRCNNUnavailable(
            f"cannot read Mask R-CNN weights from {path}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Expected a state_dict saved with "
            f"torch.save(model.state_dict(), path). {_how_to_provide()}"
        ) from err
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise MaskRCNNUnavailable(
            f"{path} does not hold a state_dict (a mapping of parameter names to tensors). "
            f"{_how_to_provide()}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def build_maskrcnn(state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """``maskrcnn_resnet50_fpn_v2`` without any pretrained download, optionally loaded.

    The class count is read from the state_dict (COCO: 91), so fine-tuned heads load too.
    Raises :class:`MaskRCNNUnavailable` when the state_dict does not fit the architecture.
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    num_classes = COCO_NUM_CLASSES
    if state_dict is not None and _CLASS_LOGITS_KEY in state_dict:
        num_classes = int(state_dict[_CLASS_LOGITS_KEY].shape[0])
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes)
    if state_dict is not None:
        try:
            result = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:  # shape mismatches
            first = str(err).splitlines()
            raise MaskRCNNUnavailable(
                f"the weights do not fit maskrcnn_resnet50_fpn_v2: {' '.join(first[:3])}"
            ) from err
        if result.missing_keys or result.unexpected_keys:
            raise MaskRCNNUnavailable(
                "the weights do not fit maskrcnn_resnet50_fpn_v2: "
                f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
                f"{len(result.unexpected_keys)} unexpected keys "
                f"(e.g. {result.unexpected_keys[:3]})"
            )
    return model


def weights_path(cfg: MaskRCNNConfig) -> Path:
    """The file :meth:`MaskRCNNSegmenter.from_config` reads: ``cfg.weights``, else the hub
    cache's."""
    return Path(cfg.weights).expanduser() if cfg.weights else hub_cache_weights_path()


def apply_speed_settings(model: nn.Module, cfg: MaskRCNNConfig) -> nn.Module:
    """Input size, RPN proposal counts and detections per image of a torchvision Mask R-CNN.

    The one place that writes torchvision's ``rpn._pre_nms_top_n`` / ``_post_nms_top_n``
    (private dicts keyed "training"/"testing"; only "testing" is changed).
    """
    model.transform.min_size = (cfg.min_size,)
    model.transform.max_size = cfg.max_size
    model.rpn._pre_nms_top_n["testing"] = cfg.rpn_pre_nms_top_n
    model.rpn._post_nms_top_n["testing"] = cfg.rpn_post_nms_top_n
    model.roi_heads.detections_per_img = cfg.detections_per_img
    return model


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image → float ``3xHxW`` tensor in ``[0, 1]`` (Mask R-CNN normalises internally)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def _box_iou(boxes: torch.Tensor, box: Sequence[float]) -> torch.Tensor:
    """IoU of each ``(x0, y0, x1, y1)`` row of ``boxes`` with one ``box``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ix0 = boxes[:, 0].clamp(min=x0)
    iy0 = boxes[:, 1].clamp(min=y0)
    ix1 = boxes[:, 2].clamp(max=x1)
    iy1 = boxes[:, 3].clamp(max=y1)
    inter = (ix1 - ix0).clamp(min=0) * (iy1 - iy0).clamp(min=0)
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    union = areas + (x1 - x0) * (y1 - y0) - inter
    return inter / union.clamp(min=1e-9)


class MaskRCNNSegmenter:
    """Object / spurious masks from a torchvision-style instance segmentation model."""

    def __init__(self, model: nn.Module, cfg: MaskRCNNConfig | None = None) -> None:
        self.cfg = cfg or MaskRCNNConfig()
        if self.cfg.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.cfg.batch_size}")
        self.device = default_device(self.cfg.device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_config(cls, cfg: MaskRCNNConfig | None = None) -> MaskRCNNSegmenter:
        """Build Mask R-CNN from ``cfg.weights`` or the torch hub cache; never downloads.

        Raises :class:`MaskRCNNUnavailable` when no weights file exists there or it does not
        hold ``maskrcnn_resnet50_fpn_v2`` weights.
        """
        cfg = cfg or MaskRCNNConfig()
        path = weights_path(cfg)
        if not path.is_file():
            where = "the configured path" if cfg.weights else "the torch hub cache"
            raise MaskRCNNUnavailable(
                f"no Mask R-CNN weights at {path} ({where}); the segmenter is off. "
                f"{_how_to_provide()}"
            )
        state_dict = _read_state_dict(path)
        try:
            model = build_maskrcnn(state_dict)
        except MaskRCNNUnavailable as err:
            raise MaskRCNNUnavailable(f"{path}: {err}. {_how_to_provide()}") from err
        apply_speed_settings(model, cfg)
        fuse_conv_bn(model.eval())  # exact up to float rounding; about 9 % less CPU
        log.info("Mask R-CNN weights loaded from %s", path)
        return cls(model, cfg)

    @torch.inference_mode()
    def detect(self, images: Sequence[Image.Image]) -> list[dict[str, torch.Tensor]]:
        """Raw detections per image (``boxes``, ``scores``, ``labels``, ``masks`` on the CPU),
        in batches of ``cfg.batch_size``."""
        outputs: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(images), self.cfg.batch_size):
            chunk = images[start : start + self.cfg.batch_size]
            tensors = [_to_tensor(image).to(self.device) for image in chunk]
            results = self.model(tensors)
            if len(results) != len(tensors):
                raise RuntimeError(
                    f"the segmentation model returned {len(results)} results for "
                    f"{len(tensors)} images"
                )
            for out in results:
                outputs.append({k: v.detach().cpu() for k, v in out.items()})
        return outputs

    def _instance_masks(self, detection: Mapping[str, torch.Tensor], size: tuple[int, int]):
        """Boolean ``(N, H, W)`` instance masks of one detection dict (``size`` = (w, h))."""
        masks = detection["masks"]
        width, height = size
        if masks.numel() == 0:
            return np.zeros((0, height, width), dtype=bool)
        if masks.ndim == 4:
            masks = masks[:, 0]
        if tuple(masks.shape[-2:]) != (height, width):
            raise ValueError(
                f"the segmentation model returned masks of size {tuple(masks.shape[-2:])} for "
                f"an image of {height}x{width} (rows x columns)"
            )
        return (masks >= self.cfg.mask_threshold).numpy()

    def object_masks(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Per image, the union of instances scoring at least ``cfg.score_threshold`` (bool HxW)."""
        result = []
        for image, det in zip(images, self.detect(images), strict=True):
            masks = self._instance_masks(det, image.size)
            keep = (det["scores"] >= self.cfg.score_threshold).numpy()
            result.append(masks[keep].any(axis=0) if keep.any() else self._empty(image))
        return result

    def spurious_masks(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Per image, everything that is not the object (bool HxW), cleaned of specks and
        holes smaller than ``cfg.min_region_px`` (see :func:`remove_specks`)."""
        return [remove_specks(~obj, self.cfg.min_region_px) for obj in self.object_masks(images)]

    def box_mask(self, image: Image.Image, box: Sequence[float]) -> np.ndarray:
        """The object inside ``box`` = ``(x0, y0, x1, y1)`` in pixels (bool HxW, False outside).

        The model runs on the whole image (the context helps it, and the result matches the
        pre-annotation). Of the detections whose mask reaches into the box, whatever their
        score, the one whose box has the highest IoU with ``box`` is taken (ties: higher score)
        and clipped to the box. All False when no detection reaches into it.
        """
        x0, y0, x1, y1 = pixel_box(box, *image.size)
        det = self.detect([image])[0]
        masks = self._instance_masks(det, image.size)
        out = self._empty(image)
        if len(masks) == 0:
            return out
        inside = masks[:, y0:y1, x0:x1]
        touches = torch.from_numpy(inside.reshape(len(masks), -1).any(axis=1))
        if not touches.any():
            return out
        iou = _box_iou(det["boxes"].float(), (x0, y0, x1, y1))
        order = sorted(
            (i for i in range(len(masks)) if touches[i]),
            key=lambda i: (float(iou[i]), float(det["scores"][i])),
        )
        out[y0:y1, x0:x1] = inside[order[-1]]
        return out

    @staticmethod
    def _empty(image: Image.Image) -> np.ndarray:
        width, height = image.size
        return np.zeros((height, width), dtype=bool)
