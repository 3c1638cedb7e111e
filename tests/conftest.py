"""Shared fixtures: tiny synthetic datasets and models, made by the tests (no network)."""

from __future__ import annotations

import os

import pytest
import torch

from robustar_ls.config import SyntheticConfig

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 16 px, 3-class patch dataset: 8 train / 4 val / 4 test images per class."""
    from robustar_ls.data.synthetic import make_dataset

    out = tmp_path_factory.mktemp("tiny") / "data"
    cfg = SyntheticConfig(
        kind="patch", size=16, per_class=8, val_per_class=4, test_per_class=4, classes=3, seed=1
    )
    make_dataset(out, cfg)
    return out
