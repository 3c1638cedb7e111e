"""The learned spurious segmenter: a tiny U-Net that learns the expert's notion of "spurious".

Trained on the dataset's own masks (``<data>/masks/train/...``, see
:mod:`robustar_ls.train.segmenter`), it gives every pixel a probability of being spurious. It
knows no JSON, no Label Studio and no mask store: images in, probability maps out.

Images are resized to a square ``size`` x ``size`` input (large images are downscaled) and the
probability map is resized back to each image's own size, so any mix of image sizes works.

File format (``torch.save``, written atomically like classifier checkpoints)::

    {format: "robustar-ls-spurious-segmenter", format_version: 1, model: state_dict,
     config: {...SpuriousSegmenterConfig}, version: "v1-1a2b3c4d", parent_version,
     created_at, trained_on: [relpaths], metrics: {...}}
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from robustar_ls.config import SpuriousSegmenterConfig
from robustar_ls.data.tensors import images_to_unit_batch
from robustar_ls.errors import RobustarError
from robustar_ls.models.checkpoint import atomic_write_bytes, next_version

FORMAT = "robustar-ls-spurious-segmenter"
FORMAT_VERSION = 1
MASK_THRESHOLD = 0.5  # a pixel is spurious when its probability is at least this
DEFAULT_FILE = Path(".robustar") / "spurious_segmenter.pt"  # inside the dataset folder


def default_segmenter_path(data_root: str | Path) -> Path:
    """Where a dataset's learned segmenter lives unless told otherwise."""
    return Path(data_root) / DEFAULT_FILE


class SegmenterFileError(RobustarError):
    """A spurious-segmenter file is missing, unreadable or of another kind."""


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """Three-level U-Net (full, 1/2, 1/4 resolution) giving one logit per pixel.

    The full-resolution skip keeps edges pixel-exact (a 4 px corner patch must stay 4 px);
    the 1/4 level sees about 40 px of context (enough to tell a background from an object).
    Input: ``(N, 3, H, W)`` in ``[0, 1]``, H and W multiples of 4.
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.dec2, self.dec1 = _block(6 * w, 2 * w), _block(3 * w, w)
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x - 0.5)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.head(d1)[:, 0]


def choose_size(sides: Sequence[int], max_size: int) -> int:
    """The input side for images whose longer sides are ``sides``: median, capped, multiple of 4."""
    side = int(np.median(sides)) if len(sides) else max_size
    side = min(max(side, 8), max_size)
    return max(8, side // 4 * 4)


def _as_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return image.convert("RGB")


def to_inputs(images: Sequence[Image.Image | np.ndarray], size: int) -> torch.Tensor:
    """RGB images (PIL or uint8 HxWx3) → float batch (N, 3, size, size) in [0, 1]: the
    classifier's own conversion (:func:`robustar_ls.data.tensors.images_to_unit_batch`, bilinear
    resize), without its normalisation."""
    return images_to_unit_batch([_as_rgb(im) for im in images], size).contiguous()


def to_input(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """An RGB image (PIL or uint8 HxWx3) → float tensor (3, size, size) in [0, 1]."""
    return to_inputs([image], size)[0]


def image_hw(image: Image.Image | np.ndarray) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    return image.size[1], image.size[0]


def mask_confidence(prob: np.ndarray, threshold: float = MASK_THRESHOLD) -> float:
    """How sure the segmenter is of its own mask: soft IoU between ``prob`` and its binarisation.

    ``sum(p over mask) / (|mask| + sum(p outside mask))``: 1.0 when every mask pixel has p = 1
    and every other pixel p = 0; it falls with undecided pixels inside the mask *and* with
    probability mass left outside it, relative to the mask's size (so a tiny mask with a fuzzy
    halo scores low). An empty mask scores 0.0 (nothing to propagate).
    """
    prob = np.asarray(prob, dtype=np.float64)
    mask = prob >= threshold
    area = int(mask.sum())
    if area == 0:
        return 0.0
    return float(prob[mask].sum() / (area + prob[~mask].sum()))


@dataclass
class SpuriousSegmenter:
    """A trained segmenter plus the metadata that made it."""

    net: TinyUNet
    config: SpuriousSegmenterConfig
    version: str = "v0-untrained"
    parent_version: str | None = None
    created_at: str = ""
    trained_on: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, config: SpuriousSegmenterConfig) -> SpuriousSegmenter:
        if config.size <= 0 or config.size % 4:
            raise SegmenterFileError(
                f"segmenter input size must be a positive multiple of 4, got {config.size}"
            )
        return cls(net=TinyUNet(config.width), config=config)

    @torch.no_grad()
    def predict_proba(
        self, images: Sequence[Image.Image | np.ndarray], batch_size: int = 64
    ) -> list[np.ndarray]:
        """Per-pixel spurious probability (float32, each image's own H x W) for RGB images."""
        self.net.eval()
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = to_inputs(chunk, self.config.size)
            probs = torch.sigmoid(self.net(batch))[:, None]
            for im, prob in zip(chunk, probs, strict=True):
                h, w = image_hw(im)
                if (h, w) != tuple(prob.shape[-2:]):
                    prob = F.interpolate(prob[None], size=(h, w), mode="bilinear")[0]
                out.append(prob[0].numpy().astype(np.float32))
        return out

    def predict_masks(
        self, images: Sequence[Image.Image | np.ndarray], threshold: float = MASK_THRESHOLD
    ) -> list[np.ndarray]:
        """Boolean spurious masks (probability >= ``threshold``)."""
        return [p >= threshold for p in self.predict_proba(images)]

    def save(self, path: str | Path) -> str:
        """Write atomically; returns (and sets) the new version (counter + weights hash)."""
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        self.version = next_version(state, self.parent_version)
        self.created_at = datetime.now(UTC).isoformat(timespec="seconds")
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": state,
            "config": asdict(self.config),
            "version": self.version,
            "parent_version": self.parent_version,
            "created_at": self.created_at,
            "trained_on": list(self.trained_on),
            "metrics": dict(self.metrics),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())
        return self.version


def load_spurious_segmenter(path: str | Path) -> SpuriousSegmenter:
    """Read a file written by :meth:`SpuriousSegmenter.save`; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise SegmenterFileError(
            f"segmenter {path} does not exist; train one with `robustar-ls learned-segmenter train`"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise SegmenterFileError(f"{path} is not a readable segmenter file: {err}") from err
    if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
        raise SegmenterFileError(
            f"{path} is not a robustar-ls spurious segmenter (a classifier checkpoint?)"
        )
    if int(raw.get("format_version", 0)) > FORMAT_VERSION:
        raise SegmenterFileError(
            f"{path} has format version {raw['format_version']}, newer than this robustar-ls "
            f"reads ({FORMAT_VERSION}); upgrade robustar-ls"
        )
    seg = SpuriousSegmenter.create(SpuriousSegmenterConfig.from_dict(raw.get("config") or {}))
    try:
        seg.net.load_state_dict(raw["model"])
    except (RuntimeError, KeyError) as err:
        raise SegmenterFileError(f"{path}: weights do not fit its config: {err}") from err
    seg.net.eval()
    seg.version = str(raw.get("version") or seg.version)
    seg.parent_version = raw.get("parent_version")
    seg.created_at = str(raw.get("created_at", ""))
    seg.trained_on = list(raw.get("trained_on") or [])
    seg.metrics = dict(raw.get("metrics") or {})
    return seg
