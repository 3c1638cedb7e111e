"""Training and evaluation jobs over a dataset folder, as the CLI and scripts run them."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from robustar_ls.config import ModelConfig, TrainConfig, to_dict
from robustar_ls.data.folders import ImageFolderSplits, Sample
from robustar_ls.data.groups import load_groups, split_group_metrics
from robustar_ls.data.tensors import ImageDataset
from robustar_ls.models.checkpoint import (
    Checkpoint,
    Provenance,
    load_checkpoint,
    save_checkpoint,
)
from robustar_ls.models.pretrained import crop_size, fetch_pretrained
from robustar_ls.models.zoo import create_classifier, default_device, require_imagenet_weights
from robustar_ls.train.loop import (
    EpochContext,
    evaluate,
    make_optimizer,
    seed_everything,
    train_one_epoch,
)
from robustar_ls.train.progress import OnProgress, ProgressTracker

log = logging.getLogger(__name__)

SCRATCH_IMAGE_SIZE = 32  # ModelConfig.image_size 0, from scratch (pretrained: the weights' crop)


def make_loader(
    samples: list[Sample],
    image_size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
) -> DataLoader:
    dataset = ImageDataset(samples, image_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        num_workers=num_workers,
    )


def evaluate_splits(
    model: torch.nn.Module,
    data: ImageFolderSplits,
    image_size: int,
    device: torch.device,
    batch_size: int = 256,
    tracker: ProgressTracker | None = None,
) -> dict[str, dict[str, Any]]:
    """``{split: {accuracy, n}}`` for every split present; ``tracker`` follows the batches.

    Where the dataset has ``groups.json`` (``make-dataset``'s datasets), the splits it covers
    also get ``worst_group`` and ``bias_conflicting`` (and ``bias_aligned``, with their counts:
    ``data/groups.py``), from the same pass's predictions.
    """
    loaders = {
        split: make_loader(samples, image_size, batch_size)
        for split, samples in data.splits.items()
    }
    groups = load_groups(data.root) or {}
    if tracker is not None:
        tracker.start("eval", sum(len(loader) for loader in loaders.values()))
    on_batch = tracker.step if tracker is not None else None
    out: dict[str, dict[str, Any]] = {}
    for split, loader in loaders.items():
        predictions: list[int] | None = [] if split in groups else None
        out[split] = evaluate(model, loader, device, on_batch, predictions)
        if predictions is not None:
            samples = data.splits[split]
            out[split].update(
                split_group_metrics(
                    [s.relpath for s in samples],
                    [s.label for s in samples],
                    predictions,
                    data.classes,
                    groups[split],
                )
            )
    return out


def _initial_model(
    parent: Checkpoint | None, cfg: ModelConfig, num_classes: int
) -> tuple[torch.nn.Module, str, int, int]:
    """(model, arch, width, image size): the parent checkpoint's, or a new model from ``cfg``.

    ``cfg.pretrained``: torchvision's ImageNet weights, downloaded into the torch hub cache
    first unless they are there or ``cfg.offline``; the image size defaults to their crop size.
    """
    if parent is not None:
        if cfg.pretrained:
            log.info("--init given: training starts from %s, not from ImageNet", parent.version)
        return parent.model, parent.arch, parent.width, parent.image_size
    size = cfg.image_size or SCRATCH_IMAGE_SIZE
    if cfg.pretrained:
        weights = require_imagenet_weights(cfg.arch)
        fetch_pretrained(weights, offline=cfg.offline)
        size = cfg.image_size or crop_size(weights)
    model = create_classifier(cfg.arch, num_classes, width=cfg.width, pretrained=cfg.pretrained)
    return model, cfg.arch, cfg.width, size


def _train_epochs(
    model: torch.nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    progress: Callable | None,
    tracker: ProgressTracker,
) -> list[dict[str, float]]:
    """Every epoch of plain training; the per-epoch loss and accuracy."""
    optimizer, scheduler = make_optimizer(model, cfg, cfg.epochs * len(loader))
    context = EpochContext(
        optimizer,
        scheduler,
        device,
        epochs=cfg.epochs,
        augment=cfg.augment,
        generator=generator,
        progress=progress,
        on_step=tracker.step,
    )
    history = []
    for epoch in range(cfg.epochs):
        tracker.start_epoch(epoch)
        stats = train_one_epoch(model, loader, context, epoch)
        history.append({"epoch": epoch + 1, **stats})
        loss, accuracy = stats["loss"], stats["accuracy"]
        log.info("epoch %d/%d loss %.4f acc %.4f", epoch + 1, cfg.epochs, loss, accuracy)
    return history


def train_classifier(
    data_root: str | Path,
    out: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    init: str | Path | None = None,
    progress: Callable | None = None,
    on_progress: OnProgress | None = None,
) -> dict[str, Any]:
    """Train (from scratch or from ``init``) on ``train/``, evaluate every split, save ``out``.

    Returns a summary with the new model version and per-split accuracy. ``on_progress`` gets
    the progress records (``train/progress.py``).
    """
    data = ImageFolderSplits.open(data_root, required=("train",))
    device = default_device(train_cfg.device)
    generator = seed_everything(train_cfg.seed)
    parent = load_checkpoint(init, classes=data.classes, arch=model_cfg.arch) if init else None
    model, arch, width, image_size = _initial_model(parent, model_cfg, len(data.classes))
    model.to(device)
    loader = make_loader(
        data.splits["train"],
        image_size,
        train_cfg.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=train_cfg.num_workers,
    )
    tracker = ProgressTracker(on_progress, train_cfg.epochs, len(loader))
    started = time.perf_counter()
    history = _train_epochs(model, loader, train_cfg, device, generator, progress, tracker)
    metrics = evaluate_splits(model, data, image_size, device, tracker=tracker)
    tracker.start("write")
    version = save_checkpoint(
        out,
        model,
        arch=arch,
        classes=data.classes,
        image_size=image_size,
        width=width,
        provenance=Provenance(
            parent_version=parent.version if parent else None,
            metrics={"splits": metrics, "history": history},
            config={
                "model": to_dict(dataclasses.replace(model_cfg, image_size=image_size)),
                "train": to_dict(train_cfg),
                "data": str(data.root),
            },
            history={"seconds": round(time.perf_counter() - started, 3)},
        ),
    )
    return {
        "model_version": version,
        "parent_version": parent.version if parent else None,
        "splits": metrics,
    }
