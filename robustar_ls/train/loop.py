"""Plain training and evaluation as small functions (torchvision references' habit), and
:func:`run_epoch`, the one epoch driver that plain and paired training (``paired_epoch``) share,
over an :class:`EpochContext` (optimizer, schedule, device, random stream, callbacks) that the
caller builds once per training.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from robustar_ls.config import TrainConfig
from robustar_ls.train.augment import random_crop_flip

if TYPE_CHECKING:
    from robustar_ls.train.distributed import DistContext

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]
WARMUP_FRACTION = 0.0  # of the steps, a linear learning-rate warm-up before the cosine decay


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def lr_factor(step: int, steps: int, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    done = min(step - warmup, steps - warmup) / max(steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * done))


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """SGD with momentum and a cosine schedule over ``steps`` (constant LR was unstable)."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    warmup = int(WARMUP_FRACTION * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup))
    return optimizer, scheduler


# A training step: one batch -> (the loss to back-propagate, a float64 row of statistics that
# the epoch sums: counts and per-image sums, never means).
Step = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EpochContext:
    """What every epoch of one training shares, built once per training by its caller.

    ``optimizer`` and ``scheduler`` step after each batch; batches go to ``device``;
    ``augment`` switches the random crop and flip, drawn (with paired training's fills) from
    ``generator``; ``progress`` wraps each epoch's batches in a bar labelled "epoch i/``epochs``"
    (:func:`epoch_progress`); ``on_step(loss)`` is called after each batch (e.g.
    ``ProgressTracker.step``); ``dist``, under DDP, sums paired training's statistics over the
    processes.
    """

    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    epochs: int = 1
    augment: bool = True
    generator: torch.Generator | None = None
    progress: Progress | None = None
    on_step: Callable[[float], None] | None = None
    dist: DistContext | None = None


def run_epoch(
    loader: Iterable,
    context: EpochContext,
    step: Step,
    n_stats: int,
    *,
    epoch: int = 0,
    postfix: Callable[[torch.Tensor], dict[str, str]] | None = None,
) -> torch.Tensor:
    """The one epoch driver of plain and paired training: per batch ``step`` → backward →
    optimizer and scheduler step; returns the ``n_stats`` statistics summed over the epoch.

    ``epoch`` (from 0) labels the progress bar; ``postfix(sums)`` sets its postfix after each
    batch; ``context.on_step(loss)`` is called after each batch with its loss.
    """
    sums = torch.zeros(n_stats, dtype=torch.float64)
    progress = epoch_progress(context.progress, epoch, context.epochs)
    batches = progress(loader) if progress else loader
    for batch in batches:
        loss, stats = step(batch)
        context.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        context.optimizer.step()
        context.scheduler.step()
        sums += stats
        if context.on_step is not None:
            context.on_step(float(loss.detach()))
        if postfix and hasattr(batches, "set_postfix"):
            batches.set_postfix(**postfix(sums))
    return sums


def epoch_progress(progress: Progress | None, epoch: int, epochs: int) -> Progress | None:
    """``progress`` labelled "epoch i/n" (a bar per epoch that does not stay), or None."""
    if progress is None:
        return None
    return lambda it: progress(it, desc=f"epoch {epoch + 1}/{epochs}", leave=False)


def train_one_epoch(
    model: nn.Module, loader: DataLoader, context: EpochContext, epoch: int = 0
) -> dict[str, float]:
    """Epoch ``epoch`` (from 0) of cross-entropy training; returns mean loss and accuracy."""
    model.train()
    device, generator = context.device, context.generator

    def step(batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        if context.augment:
            images, _ = random_crop_flip(images, generator=generator)
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        n = len(labels)
        correct = (logits.argmax(1) == labels).sum().item()
        return loss, torch.tensor([loss.item() * n, correct, n], dtype=torch.float64)

    def postfix(sums: torch.Tensor) -> dict[str, str]:
        return {"loss": f"{sums[0] / sums[2]:.3f}", "acc": f"{sums[1] / sums[2]:.3f}"}

    sums = run_epoch(loader, context, step, 3, epoch=epoch, postfix=postfix)
    seen = max(float(sums[2]), 1.0)
    return {"loss": float(sums[0]) / seen, "accuracy": float(sums[1]) / seen}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    on_batch: Callable[[], None] | None = None,
    predictions: list[int] | None = None,
) -> dict[str, float]:
    """Accuracy and count over ``loader``; ``on_batch()`` after each batch; ``predictions``, when
    given, is extended with every image's predicted class index, in the loader's order."""
    model.eval()
    correct, seen = 0, 0
    for images, labels in loader:
        logits = model(images.to(device))
        predicted = logits.argmax(1).cpu()
        correct += (predicted == labels).sum().item()
        seen += len(labels)
        if predictions is not None:
            predictions.extend(predicted.tolist())
        if on_batch is not None:
            on_batch()
    return {"accuracy": correct / seen if seen else float("nan"), "n": seen}
