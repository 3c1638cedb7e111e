"""Small synthetic datasets with a quickly trained width-4 model, for tests."""

from __future__ import annotations

from pathlib import Path

from robustar_ls.config import ModelConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.train.run import train_classifier


def dataset_with_model(root: Path, cfg: SyntheticConfig, train: TrainConfig) -> tuple[Path, Path]:
    """``make-dataset`` into ``root``, then ``root/model.pt`` trained on it; (root, model)."""
    make_dataset(root, cfg)
    checkpoint = root / "model.pt"
    train_classifier(root, checkpoint, ModelConfig(width=4, image_size=cfg.size), train)
    return root, checkpoint
