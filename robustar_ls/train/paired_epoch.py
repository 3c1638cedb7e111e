"""One epoch of paired training: build (x, x̃) per batch, then the paired loss, over the shared
epoch driver :func:`robustar_ls.train.loop.run_epoch`.

Per batch: random crop and flip, the same for image and mask (``augment.random_crop_flip``);
the fill in [0, 1] space (``fills.apply_fill``); then ImageNet normalisation; then one
forward/backward pass over x and the annotated x̃.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from robustar_ls.config import PairedConfig
from robustar_ls.data.tensors import normalize
from robustar_ls.train.augment import random_crop_flip
from robustar_ls.train.distributed import all_reduce_sum
from robustar_ls.train.fills import DonorPool, apply_fill
from robustar_ls.train.loop import EpochContext, run_epoch
from robustar_ls.train.paired import paired_loss, select_worst

TERMS = ("loss", "ce", "ce_paired", "align")


class PairedBatch(NamedTuple):
    """One batch of :class:`~robustar_ls.train.paired_data.PairedDataset`: images in [0, 1],
    their masks, which images have one, and the labels."""

    images01: torch.Tensor
    masks: torch.Tensor
    has_mask: torch.Tensor
    labels: torch.Tensor


def make_pairs(
    model: nn.Module,
    batch: PairedBatch,
    cfg: PairedConfig,
    generator: torch.Generator | None,
    device: torch.device,
    donors: DonorPool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (x, x̃) of ``batch`` on ``device``; x̃ = x where there is no mask.

    ``donors``: earlier batches' annotated images, which ``swap`` may copy from too; this
    batch's annotated images are added to it.

    With ``cfg.worst_of`` = K > 1, K fills are drawn for the annotated images and the one with
    the highest paired loss is kept (:func:`paired.select_worst`).
    """
    images01, masks, has_mask, labels = batch
    x = normalize(images01).to(device)
    if not bool(has_mask.any()):
        return x, x
    rows = has_mask.nonzero().flatten()
    sub, sub_masks, sub_labels = images01[rows], masks[rows], labels[rows]
    pool = (donors.images, donors.masks, donors.labels) if donors is not None else (None,) * 3
    fill = lambda: apply_fill(  # noqa: E731
        sub, sub_masks, cfg.fill, generator, pool[0], pool[1], sub_labels, pool[2]
    )
    if cfg.worst_of > 1:
        candidates = torch.stack([normalize(fill()) for _ in range(cfg.worst_of)]).to(device)
        base = getattr(model, "module", model)  # no DDP collectives in the selection pass
        filled = select_worst(
            base, x[rows.to(device)], candidates, labels[rows].to(device), cfg.align_weight
        )
    else:
        filled = normalize(fill()).to(device)
    if donors is not None:
        donors.add(sub, sub_masks, sub_labels)
    x_tilde = x.clone()
    x_tilde[rows.to(device)] = filled
    return x, x_tilde


def paired_train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    context: EpochContext,
    cfg: PairedConfig,
    epoch: int = 0,
) -> dict[str, float]:
    """Epoch ``epoch`` (from 0) of paired training; returns the epoch's terms (summed over
    ``context.dist``'s processes).

    ``loss`` and ``ce`` are means per image; ``ce_paired`` and ``align`` are means per
    *annotated* image (so they read the same whatever the fraction annotated); ``accuracy``
    is on the unfilled x; ``annotated`` is the fraction of images with a mask.
    """
    model.train()
    donors = DonorPool() if cfg.fill == "swap" else None
    device, generator = context.device, context.generator

    def step(batch) -> tuple[torch.Tensor, torch.Tensor]:
        batch = PairedBatch(*batch)
        if context.augment:
            images01, masks = random_crop_flip(batch.images01, batch.masks, generator=generator)
            batch = batch._replace(images01=images01, masks=masks)
        x, x_tilde = make_pairs(model, batch, cfg, generator, device, donors)
        labels, has_mask = batch.labels.to(device), batch.has_mask
        terms = paired_loss(model, x, x_tilde, labels, has_mask, cfg.align_weight)
        n = len(labels)
        correct = (terms["logits"].argmax(1) == labels).sum().item()
        row = [*(terms[t].item() * n for t in TERMS), correct, n, int(has_mask.sum())]
        return terms["loss"], torch.tensor(row, dtype=torch.float64)

    def postfix(sums: torch.Tensor) -> dict[str, str]:
        return {"loss": f"{sums[0] / sums[5]:.3f}"}

    # loss ce ce_paired align correct seen annotated
    sums = run_epoch(loader, context, step, 7, epoch=epoch, postfix=postfix)
    if context.dist is not None:
        sums = all_reduce_sum(context.dist, sums)
    seen, annotated = max(float(sums[5]), 1.0), float(sums[6])
    return {
        "loss": float(sums[0]) / seen,
        "ce": float(sums[1]) / seen,
        "ce_paired": float(sums[2]) / annotated if annotated else 0.0,
        "align": float(sums[3]) / annotated if annotated else 0.0,
        "accuracy": float(sums[4]) / seen,
        "annotated": annotated / seen,
    }
