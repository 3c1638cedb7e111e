"""Plain training and evaluation as small functions (torchvision references' habit)."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from robustar_ls.config import TrainConfig
from robustar_ls.train.augment import random_crop_flip

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """SGD with momentum and a cosine schedule over ``steps`` (constant LR was unstable)."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
    )
    return optimizer, scheduler


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    *,
    augment: bool = True,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """One epoch of cross-entropy training; returns mean loss and accuracy."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    batches = progress(loader) if progress else loader
    for images, labels in batches:
        if augment:
            images, _ = random_crop_flip(images, generator=generator)
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        if progress and hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Logits for every batch of ``loader``, concatenated, in order."""
    model.eval()
    outputs = [model(images.to(device)).cpu() for images, _ in loader]
    return torch.cat(outputs) if outputs else torch.empty(0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Accuracy and count over ``loader``."""
    model.eval()
    correct, seen = 0, 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += (logits.argmax(1).cpu() == labels).sum().item()
        seen += len(labels)
    return {"accuracy": correct / seen if seen else float("nan"), "n": seen}
