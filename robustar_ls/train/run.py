"""Training and evaluation jobs over a dataset folder, as the CLI and scripts run them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from robustar_ls.config import ModelConfig, TrainConfig, to_dict
from robustar_ls.data.folders import ImageDataset, ImageFolderSplits, Sample
from robustar_ls.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from robustar_ls.models.zoo import create_classifier, default_device
from robustar_ls.train.loop import (
    epoch_progress,
    evaluate,
    make_optimizer,
    seed_everything,
    train_one_epoch,
)

log = logging.getLogger(__name__)


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
) -> dict[str, dict[str, float]]:
    """``{split: {accuracy, n}}`` for every split present."""
    return {
        split: evaluate(model, make_loader(samples, image_size, batch_size), device)
        for split, samples in data.splits.items()
    }


def _initial_model(
    parent: Checkpoint | None, cfg: ModelConfig, num_classes: int
) -> tuple[torch.nn.Module, str, int, int]:
    """(model, arch, width, image size): the parent checkpoint's, or a new model from ``cfg``."""
    if parent is not None:
        return parent.model, parent.arch, parent.width, parent.image_size
    model = create_classifier(cfg.arch, num_classes, width=cfg.width, pretrained=cfg.pretrained)
    return model, cfg.arch, cfg.width, cfg.image_size


def train_classifier(
    data_root: str | Path,
    out: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    init: str | Path | None = None,
    progress: Callable | None = None,
) -> dict[str, Any]:
    """Train (from scratch or from ``init``) on ``train/``, evaluate every split, save ``out``.

    Returns a summary with the new model version and per-split accuracy.
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
    optimizer, scheduler = make_optimizer(model, train_cfg, train_cfg.epochs * len(loader))
    history, epochs = [], train_cfg.epochs
    for epoch in range(epochs):
        stats = train_one_epoch(
            model,
            loader,
            optimizer,
            scheduler,
            device,
            augment=train_cfg.augment,
            generator=generator,
            progress=epoch_progress(progress, epoch, epochs),
        )
        history.append(stats)
        loss, accuracy = stats["loss"], stats["accuracy"]
        log.info("epoch %d/%d loss %.4f acc %.4f", epoch + 1, epochs, loss, accuracy)
    metrics = evaluate_splits(model, data, image_size, device)
    version = save_checkpoint(
        out,
        model,
        arch=arch,
        classes=data.classes,
        image_size=image_size,
        width=width,
        parent_version=parent.version if parent else None,
        metrics={"splits": metrics, "history": history},
        config={"model": to_dict(model_cfg), "train": to_dict(train_cfg), "data": str(data.root)},
    )
    return {
        "model_version": version,
        "parent_version": parent.version if parent else None,
        "splits": metrics,
    }
