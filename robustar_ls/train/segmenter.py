"""Training the learned spurious segmenter on the dataset's own masks.

``train_segmenter(data, store, cfg)`` pairs every training image that has a mask in the store
(``<class>/<stem>.png``; an all-zero mask is a valid "nothing spurious here" example) with that
mask, resizes both to the segmenter's square input and fits the tiny U-Net with BCE + soft
dice, random flips, Adam and a cosine schedule for a fixed number of steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robustar_ls.config import SpuriousSegmenterConfig
from robustar_ls.data.folders import ImageFolderSplits, Sample
from robustar_ls.data.images import displayed_size, load_rgb
from robustar_ls.data.masks import MaskError, MaskStore
from robustar_ls.errors import RobustarError
from robustar_ls.models.spurious_segmenter import (
    SpuriousSegmenter,
    TinyUNet,
    choose_size,
    to_input,
)

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]


class SegmenterDataError(RobustarError):
    """No masks to learn from, or a mask that does not fit its image."""


def masked_samples(data: ImageFolderSplits, store: MaskStore) -> list[Sample]:
    """The training images that have a mask in ``store``, in the dataset's order."""
    found = store.match([s.relpath for s in data.splits["train"]])
    return [s for s in data.splits["train"] if s.relpath in found]


def load_pairs(
    samples: Sequence[Sample], store: MaskStore, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, S, S)`` in [0, 1] and soft masks ``(N, S, S)`` in [0, 1]."""
    images, masks = [], []
    for sample in samples:
        try:
            mask = store.read(sample.relpath, size=displayed_size(sample.path))
        except MaskError as err:
            raise SegmenterDataError(str(err)) from err
        images.append(to_input(load_rgb(sample.path), size))
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (size, size), resample=Image.Resampling.BILINEAR
        )
        masks.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0))
    return torch.stack(images), torch.stack(masks)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> dict:
    """``{loss, bce, dice}``: per-pixel BCE plus (1 - soft dice over the whole batch)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return {"loss": bce + dice_weight * (1 - dice), "bce": bce, "dice": dice}


def random_flips(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
    """Flip each (image, mask) pair horizontally and/or vertically, the same way for both."""
    for dim in (-1, -2):
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(dim), x)
        y = torch.where(flip[:, None, None], y.flip(dim), y)
    return x, y


def balanced_weights(masks: torch.Tensor) -> torch.Tensor:
    """Sampling weights giving images with and without spurious pixels half the draws each
    (when both exist), so a few painted images among many empty ones are not drowned out."""
    positive = masks.flatten(1).amax(1) > 0
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return torch.ones(len(masks))
    return torch.where(positive, 0.5 / n_pos, 0.5 / n_neg)


def permute_channels(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shuffle each image's RGB channels: learn the feature's structure, not its exact hue
    (grey stays grey, white stays white, a red patch becomes a green or blue one)."""
    order = torch.stack([torch.randperm(3, generator=gen) for _ in range(x.shape[0])])
    return torch.gather(x, 1, order[:, :, None, None].expand_as(x))


def fit(
    net: TinyUNet,
    images: torch.Tensor,
    masks: torch.Tensor,
    cfg: SpuriousSegmenterConfig,
    progress: Progress | None = None,
) -> dict:
    """Fit ``net`` in place for ``cfg.steps`` steps; returns the last steps' mean loss terms."""
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    )
    net.train()
    weights = balanced_weights(masks)
    recent: list[dict] = []
    steps: Iterable[int] = range(cfg.steps)
    for _ in progress(steps, desc="segmenter", unit="step") if progress else steps:
        index = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen)
        x, y = random_flips(images[index], masks[index], gen)
        if cfg.colour_augment:
            x = permute_channels(x, gen)
        terms = segmentation_loss(net(x), y, cfg.dice_weight)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        schedule.step()
        recent = (recent + [{k: float(v.detach()) for k, v in terms.items()}])[-20:]
    net.eval()
    return {k: round(sum(t[k] for t in recent) / len(recent), 4) for k in recent[0]}


def train_segmenter(
    data: ImageFolderSplits,
    store: MaskStore,
    cfg: SpuriousSegmenterConfig | None = None,
    progress: Progress | None = None,
    parent_version: str | None = None,
) -> SpuriousSegmenter:
    """A segmenter trained on every training image of ``data`` that has a mask in ``store``."""
    cfg = cfg or SpuriousSegmenterConfig()
    samples = masked_samples(data, store)
    if not samples:
        raise SegmenterDataError(
            f"no training image of {data.root} has a mask in {store.root / 'train'}; paint some "
            "'Spurious' regions and sync them (or pass --masks DIR)"
        )
    if cfg.size <= 0:
        sides = [max(displayed_size(s.path)) for s in samples]
        cfg = replace(cfg, size=choose_size(sides, cfg.max_size))
    torch.manual_seed(cfg.seed)
    seg = SpuriousSegmenter.create(cfg)
    seg.parent_version = parent_version
    started = time.perf_counter()
    images, masks = load_pairs(samples, store, cfg.size)
    terms = fit(seg.net, images, masks, cfg, progress)
    seg.trained_on = [s.relpath for s in samples]
    seg.metrics = {
        "masks": len(samples),
        "spurious_fraction": round(float(masks.mean()), 4),
        "train_seconds": round(time.perf_counter() - started, 2),
        **{f"final_{k}": v for k, v in terms.items()},
    }
    log.info("segmenter trained on %d masks: %s", len(samples), seg.metrics)
    return seg
