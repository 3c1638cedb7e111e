"""Paired fine-tuning of a served checkpoint from spurious-pixel masks.

:func:`paired_finetune` loads a checkpoint, evaluates it on every split, fine-tunes it on
``train/`` with the paired loss (``paired.py``) for the images that have a mask in a
mask-store folder, evaluates again and writes the new checkpoint atomically (new model version,
the old one as parent, the metrics and the settings). Until that final ``os.replace`` the old
checkpoint file is untouched, so a run killed at any moment leaves the old model serving.

Per batch: random crop and flip, the same for image and mask (``augment.random_crop_flip``);
the fill in [0, 1] space (``fills.apply_fill``); then ImageNet normalisation; then one
forward/backward pass over x and the annotated x̃. SGD with a cosine schedule over all steps
(a constant rate gave unstable end points; see MEASURED.md).

Launched by ``torchrun`` it trains with DistributedDataParallel: each process sees its shard
(DistributedSampler), ``TrainConfig.batch_size`` is per process, and only rank 0 evaluates and
writes the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from robustar_ls.config import ConfigError, PairedConfig, TrainConfig, to_dict
from robustar_ls.data.folders import ImageFolderSplits, Sample, normalize
from robustar_ls.data.images import displayed_size, load_rgb
from robustar_ls.data.masks import MaskError, MaskStore
from robustar_ls.models.checkpoint import load_checkpoint, save_checkpoint
from robustar_ls.train.augment import random_crop_flip
from robustar_ls.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from robustar_ls.train.fills import FILL_MODES, apply_fill
from robustar_ls.train.loop import make_optimizer, seed_everything
from robustar_ls.train.paired import paired_loss, select_worst
from robustar_ls.train.run import evaluate_splits

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]
TERMS = ("loss", "ce", "ce_paired", "align")


# -- data -----------------------------------------------------------------------------------


def find_masks(
    samples: list[Sample], masks_root: str | Path, only: set[str] | None = None
) -> dict[str, Path]:
    """``{image relpath: mask path}`` for the training images with a mask in ``masks_root``.

    ``only`` restricts the result to those image relpaths ("<class>/<file>"). Every mask's size
    is checked against its image's here, before any training: a mismatch is a :class:`MaskError`
    that names the file.
    """
    root = Path(masks_root)
    if not root.is_dir():
        raise MaskError(
            f"mask folder {root} does not exist; sync masks from Label Studio first or pass "
            "--masks DIR (a folder laid out as DIR/train/<class>/<stem>.png)"
        )
    store = MaskStore(root)
    found = store.match([s.relpath for s in samples])
    if only is not None:
        missing = sorted(set(only) - set(found))
        if missing:
            log.warning(
                "%d selected images have no mask in %s (e.g. %s)", len(missing), root, missing[0]
            )
        found = {rel: path for rel, path in found.items() if rel in only}
    by_rel = {s.relpath: s for s in samples}
    for rel, mask_path in found.items():
        image_size = displayed_size(by_rel[rel].path)
        mask_size = displayed_size(mask_path)
        if mask_size != image_size:
            raise MaskError(
                f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image "
                f"{by_rel[rel].path} is {image_size[0]}x{image_size[1]}; masks must have "
                "their image's size (re-export or re-sync the mask)"
            )
    return found


class PairedDataset(Dataset):
    """Training images in [0, 1] with their masks: (image (3,S,S), mask (1,S,S), has_mask, y).

    Images without a mask get an all-zero mask and ``has_mask`` False. Decoded once and kept
    in memory, like :class:`robustar_ls.data.folders.ImageDataset`.
    """

    def __init__(self, samples: list[Sample], image_size: int, masks: dict[str, Path]) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.masks = dict(masks)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index in self._cache:
            return self._cache[index]
        sample, size = self.samples[index], self.image_size
        image = load_rgb(sample.path)
        original = image.size
        if image.size != (size, size):
            image = image.resize((size, size), resample=Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mask = torch.zeros(1, size, size)
        if sample.relpath in self.masks:
            array = _read_mask(self.masks[sample.relpath], original)
            if array.shape != (size, size):
                resized = Image.fromarray(array.astype(np.uint8) * 255).resize(
                    (size, size), resample=Image.NEAREST
                )
                array = np.asarray(resized) >= 128
            mask = torch.from_numpy(array.astype(np.float32)).unsqueeze(0)
        self._cache[index] = (pixels, mask)
        return pixels, mask

    def __getitem__(self, index: int):
        pixels, mask = self._load(index)
        sample = self.samples[index]
        return pixels, mask, sample.relpath in self.masks, sample.label


def _read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) mask from a PNG (>= 128 = spurious), checked against ``size`` = (w, h)."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L")) >= 128
    except OSError as err:
        raise MaskError(f"mask {path} is unreadable: {err}") from err
    if (array.shape[1], array.shape[0]) != tuple(size):
        raise MaskError(
            f"mask {path} is {array.shape[1]}x{array.shape[0]}, its image is "
            f"{size[0]}x{size[1]}; masks must have their image's size"
        )
    return array


# -- one epoch ------------------------------------------------------------------------------


def make_pairs(
    model: nn.Module,
    images01: torch.Tensor,
    masks: torch.Tensor,
    has_mask: torch.Tensor,
    labels: torch.Tensor,
    cfg: PairedConfig,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (x, x̃) on ``device``; x̃ = x where there is no mask.

    With ``cfg.worst_of`` = K > 1, K fills are drawn for the annotated images and the one with
    the highest paired loss is kept (:func:`paired.select_worst`).
    """
    x = normalize(images01).to(device)
    if not bool(has_mask.any()):
        return x, x
    rows = has_mask.nonzero().flatten()
    sub, sub_masks = images01[rows], masks[rows]
    if cfg.worst_of > 1:
        candidates = torch.stack(
            [
                normalize(apply_fill(sub, sub_masks, cfg.fill, generator))
                for _ in range(cfg.worst_of)
            ]
        ).to(device)
        base = getattr(model, "module", model)  # no DDP collectives in the selection pass
        filled = select_worst(
            base, x[rows.to(device)], candidates, labels[rows].to(device), cfg.align_weight
        )
    else:
        filled = normalize(apply_fill(sub, sub_masks, cfg.fill, generator)).to(device)
    x_tilde = x.clone()
    x_tilde[rows.to(device)] = filled
    return x, x_tilde


def paired_train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    cfg: PairedConfig,
    *,
    augment: bool = True,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """One epoch of paired training; returns the epoch's terms (summed over processes).

    ``loss`` and ``ce`` are means per image; ``ce_paired`` and ``align`` are means per
    *annotated* image (so they read the same whatever the fraction annotated); ``accuracy``
    is on the unfilled x; ``annotated`` is the fraction of images with a mask.
    """
    model.train()
    sums = torch.zeros(7, dtype=torch.float64)  # loss ce ce_paired align correct seen annotated
    batches = progress(loader) if progress else loader
    for images01, masks, has_mask, labels in batches:
        if augment:
            images01, masks = random_crop_flip(images01, masks, generator=generator)
        x, x_tilde = make_pairs(model, images01, masks, has_mask, labels, cfg, generator, device)
        labels = labels.to(device)
        terms = paired_loss(model, x, x_tilde, labels, has_mask, cfg.align_weight)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        scheduler.step()
        n = len(labels)
        sums += torch.tensor(
            [
                terms["loss"].item() * n,
                terms["ce"].item() * n,
                terms["ce_paired"].item() * n,
                terms["align"].item() * n,
                (terms["logits"].argmax(1) == labels).sum().item(),
                n,
                int(has_mask.sum()),
            ],
            dtype=torch.float64,
        )
        if progress and hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{sums[0] / sums[5]:.3f}")
    if ctx is not None:
        sums = all_reduce_sum(ctx, sums)
    seen, annotated = max(float(sums[5]), 1.0), float(sums[6])
    return {
        "loss": float(sums[0]) / seen,
        "ce": float(sums[1]) / seen,
        "ce_paired": float(sums[2]) / annotated if annotated else 0.0,
        "align": float(sums[3]) / annotated if annotated else 0.0,
        "accuracy": float(sums[4]) / seen,
        "annotated": annotated / seen,
    }


# -- the job --------------------------------------------------------------------------------


def _check_paired_config(cfg: PairedConfig) -> None:
    if cfg.fill not in FILL_MODES:
        raise ConfigError(f"unknown fill {cfg.fill!r}; choose one of {', '.join(FILL_MODES)}")
    if cfg.align_weight < 0:
        raise ConfigError(f"align_weight must be >= 0, got {cfg.align_weight}")
    if cfg.worst_of < 1:
        raise ConfigError(f"worst_of must be >= 1, got {cfg.worst_of}")


def _accuracies(splits: dict[str, dict[str, float]]) -> dict[str, float]:
    return {split: metrics["accuracy"] for split, metrics in splits.items()}


def paired_finetune(
    data_root: str | Path | ImageFolderSplits,
    checkpoint: str | Path,
    masks_root: str | Path | None,
    paired_cfg: PairedConfig,
    train_cfg: TrainConfig,
    only: set[str] | None = None,
    out: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any] | None:
    """Fine-tune ``checkpoint`` with the paired loss; write the result to ``out`` (default:
    over ``checkpoint``).

    ``data_root``: the dataset folder, or the dataset already opened (a sync-train opens it
    once). ``masks_root`` is a mask-store folder (``<root>/train/<class>/<stem>.png``); ``None``
    means plain fine-tuning (every image unannotated: the control). ``only`` restricts which masks
    are used (image relpaths "<class>/<file>").

    Returns, on rank 0: ``{model_version, parent_version, before: {split: accuracy},
    after: {split: accuracy}, counts: {split: n}, annotated, epochs, history: [per-epoch
    terms], loss_terms: last epoch's terms, seconds, out}``; other ranks return ``None``.
    """
    _check_paired_config(paired_cfg)
    data = (
        data_root
        if isinstance(data_root, ImageFolderSplits)
        else ImageFolderSplits.open(data_root, required=("train",))
    )
    samples = data.splits["train"]
    masks = {} if masks_root is None else find_masks(samples, masks_root, only)
    if masks_root is not None and not masks and only is None:
        raise MaskError(
            f"no mask in {masks_root} matches a training image of {data.root}/train; masks "
            "must be laid out as <masks>/train/<class>/<image stem>.png"
        )
    checkpoint, out = Path(checkpoint), Path(out) if out else Path(checkpoint)
    parent = load_checkpoint(checkpoint, classes=data.classes)
    ctx = init_distributed(train_cfg.device)
    try:
        return _run(
            data, samples, masks, parent, paired_cfg, train_cfg, out, progress, ctx, masks_root
        )
    finally:
        shutdown(ctx)


def _run(data, samples, masks, parent, paired_cfg, train_cfg, out, progress, ctx, masks_root):
    device = ctx.device
    generator = seed_everything(train_cfg.seed)  # data order (one process)
    # crop, flip and fill draws: a different stream per process
    aug_generator = torch.Generator().manual_seed(train_cfg.seed + 1 + ctx.rank)
    model = parent.model.to(device)
    before = evaluate_splits(model, data, parent.image_size, device) if ctx.is_main else {}
    barrier(ctx)
    dataset = PairedDataset(samples, parent.image_size, masks)
    sampler = (
        DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=train_cfg.seed)
        if ctx.distributed
        else None
    )
    loader = DataLoader(
        dataset,
        batch_size=train_cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator if sampler is None else None,
        num_workers=train_cfg.num_workers,
    )
    if ctx.distributed:
        ids = [device.index] if device.type == "cuda" else None
        train_model: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    else:
        train_model = model
    optimizer, scheduler = make_optimizer(train_model, train_cfg, train_cfg.epochs * len(loader))
    log.info(
        "paired fine-tuning %s: %d of %d training images annotated, fill %s, λ %g, worst of %d",
        parent.version,
        len(masks),
        len(samples),
        paired_cfg.fill,
        paired_cfg.align_weight,
        paired_cfg.worst_of,
    )
    history, started = [], time.perf_counter()
    for epoch in range(train_cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        bar = None
        if progress and ctx.is_main:

            def bar(it, epoch=epoch):
                return progress(it, desc=f"epoch {epoch + 1}/{train_cfg.epochs}", leave=False)

        tick = time.perf_counter()
        stats = paired_train_one_epoch(
            train_model,
            loader,
            optimizer,
            scheduler,
            device,
            paired_cfg,
            augment=train_cfg.augment,
            generator=aug_generator,
            progress=bar,
            ctx=ctx,
        )
        stats = {"epoch": epoch + 1, **stats, "seconds": time.perf_counter() - tick}
        history.append(stats)
        if ctx.is_main:
            log.info(
                "epoch %d/%d loss %.4f ce %.4f ce_paired %.4f align %.4f acc %.4f",
                epoch + 1,
                train_cfg.epochs,
                *(stats[t] for t in TERMS),
                stats["accuracy"],
            )
    seconds = time.perf_counter() - started
    if not ctx.is_main:
        barrier(ctx)
        return None
    after = evaluate_splits(model, data, parent.image_size, device)
    version = save_checkpoint(
        out,
        model,
        arch=parent.arch,
        classes=data.classes,
        image_size=parent.image_size,
        width=parent.width,
        parent_version=parent.version,
        metrics={"splits": after, "before": before, "history": history},
        config={
            "paired": to_dict(paired_cfg),
            "train": to_dict(train_cfg),
            "data": str(data.root),
            "masks": str(masks_root) if masks_root is not None else None,
            "annotated": len(masks),
            "world_size": ctx.world_size,
        },
    )
    barrier(ctx)
    log.info("wrote %s (%s, parent %s)", out, version, parent.version)
    return {
        "model_version": version,
        "parent_version": parent.version,
        "before": _accuracies(before),
        "after": _accuracies(after),
        "counts": {split: int(m["n"]) for split, m in after.items()},
        "annotated": len(masks),
        "train_images": len(samples),
        "epochs": train_cfg.epochs,
        "history": history,
        "loss_terms": {t: history[-1][t] for t in TERMS} if history else {},
        "seconds": seconds,
        "out": str(out),
    }
