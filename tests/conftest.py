"""Shared fixtures: tiny synthetic datasets and models, made by the tests (no network)."""

from __future__ import annotations

import os

import pytest
import torch

from robustar_ls.config import SyntheticConfig

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["ROBUSTAR_LS_OFFLINE"] = "1"  # `serve` subprocesses (demo, e2e) download nothing
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Tests never download: the weights fetcher may only reach loopback servers."""
    from urllib.parse import urlparse

    from robustar_ls.models import weights_download

    real = weights_download.urlopen

    def loopback_only(request, *args, **kwargs):
        host = urlparse(request.full_url).hostname
        if host not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to download from {host}")
        return real(request, *args, **kwargs)

    monkeypatch.setattr(weights_download, "urlopen", loopback_only)


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
