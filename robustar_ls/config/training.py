"""Settings of what is trained: the classifier, its optimisation, paired training, and the
learned spurious segmenter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from robustar_ls.config.build import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Which classifier to build and the input size it expects."""

    arch: str = "resnet18_small"
    width: int = 16  # channels of the first stage, for the small-image ResNet only (64 = full)
    image_size: int = 0  # input side, px; 0 = 32, or the pretrained weights' crop size (224)
    pretrained: bool = False  # start from torchvision's ImageNet weights (models/pretrained.py)
    offline: bool = False  # never download them (also ROBUSTAR_LS_OFFLINE=1, HF_HUB_OFFLINE=1)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by plain and paired training."""

    epochs: int = 15
    batch_size: int = 16  # 32 and 64 left the objects under-trained in 10 epochs (bench/)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    num_workers: int = 0
    augment: bool = True  # random crop (pad 2) + horizontal flip

    def __post_init__(self) -> None:  # settings files; flags were checked by argparse
        if isinstance(self.epochs, int) and self.epochs < 1:
            raise ConfigError(f"train setting 'epochs' must be at least 1, not {self.epochs}")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ConfigError(
                f"train setting 'batch_size' must be at least 1, not {self.batch_size}"
            )
        if isinstance(self.lr, int | float) and not self.lr > 0:
            raise ConfigError(f"train setting 'lr' must be positive, not {self.lr}")


# Fine-tuning a trained model (sync-train, Start Training) wants gentler steps than training
# from scratch: at lr 0.05 / batch 64 paired fine-tuning on a few hundred images collapsed in
# its first epoch; lr 0.02 / batch 16 did not (bench/README.md, "paired training").
FINETUNE_DEFAULTS = {"epochs": 12, "lr": 0.02, "batch_size": 16}


@dataclass(frozen=True)
class PairedConfig:
    """Paired training: x is paired with a copy whose spurious pixels are filled."""

    fill: str = "swap"  # measured best on both kinds (bench/README.md, the fixed swap fill)
    align_weight: float = 0.1
    worst_of: int = 1  # >1: of K random fills, train on the one with the highest loss


@dataclass(frozen=True)
class SpuriousSegmenterConfig:
    """Settings of the learned segmenter and its training (saved in the file)."""

    size: int = 0  # square input side; 0 = the images' median side, capped at max_size
    max_size: int = 64  # larger images are downscaled to this (bench/README.md: time vs size)
    width: int = 8  # channels of the first level; doubled at each of the two lower levels
    steps: int = 300  # optimiser steps (not epochs: a few masks need as many steps as many)
    batch_size: int = 16
    lr: float = 0.01  # Adam, cosine-decayed to zero
    weight_decay: float = 1e-4
    dice_weight: float = 1.0  # loss = BCE + dice_weight * (1 - soft dice over the batch)
    colour_augment: bool = True  # shuffle RGB channels in training (unseen feature colours)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpuriousSegmenterConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
