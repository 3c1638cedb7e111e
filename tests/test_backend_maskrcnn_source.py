"""Mask R-CNN weights fetched in the background by ``serve`` (loopback server, fake loader)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from backend_support import BrightObjects, make_backend, task
from test_weights_download import PAYLOAD, Server

from robustar_ls.backend import maskrcnn_source
from robustar_ls.backend.build import build_predictor
from robustar_ls.cli import get_args_parser
from robustar_ls.cli.serve import offline_from_env, serve_config
from robustar_ls.config import MaskRCNNConfig, ServeConfig
from robustar_ls.models.maskrcnn import (
    MaskRCNNSegmenter,
    MaskRCNNUnavailable,
    hub_cache_weights_path,
    weights_path,
)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and a loader that accepts our small file as 'weights'."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def fake_from_config(cfg):
        path = weights_path(cfg)
        if not path.is_file():
            raise MaskRCNNUnavailable(f"no Mask R-CNN weights at {path}")
        assert path.read_bytes() == PAYLOAD  # loaded only once the whole file is there
        return MaskRCNNSegmenter(BrightObjects(), dataclasses.replace(cfg, device="cpu"))

    monkeypatch.setattr(MaskRCNNSegmenter, "from_config", staticmethod(fake_from_config))
    return tmp_path / "hub"


@pytest.fixture
def server():
    s = Server()
    s.release.set()
    yield s
    s.close()


def test_missing_weights_are_fetched_in_the_background_and_served(hub, server, tmp_path):
    backend = make_backend(tmp_path, segmenter=False)  # files; its predictor is not used
    cfg = ServeConfig(
        checkpoint=str(backend.checkpoint),
        document_root=str(backend.root),
        cache_dir=str(tmp_path / "c"),
        device="cpu",
    )
    server.release.clear()  # the download waits until the first prediction is made
    threads = []
    real_start = maskrcnn_source.start_maskrcnn

    def start(*args, **kwargs):
        seg, thread = real_start(*args, url=f"{server.url}/slow.pth", **kwargs)
        threads.append(thread)
        return seg, thread

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("robustar_ls.backend.build.start_maskrcnn", start)
        predictor = build_predictor(cfg)
    before = predictor.predict([task("ds/train/circle/c0.png")])[0]
    assert predictor.segmenter is None and "Spurious" not in str(before["result"])
    server.release.set()
    threads[0].join(10)
    assert predictor.segmenter is not None
    after = predictor.predict([task("ds/train/circle/c0.png")])[0]  # not the cached one
    assert "Spurious" in str(after["result"])
    assert hub_cache_weights_path().read_bytes() == PAYLOAD


@pytest.mark.parametrize("why", ["offline", "explicit path"])
def test_nothing_is_downloaded_offline_or_over_an_explicit_path(hub, tmp_path, caplog, why):
    cfg = (
        MaskRCNNConfig(offline=True)
        if why == "offline"
        else MaskRCNNConfig(weights=str(tmp_path / "mine.pth"))
    )
    with caplog.at_level(logging.WARNING):
        seg, thread = maskrcnn_source.start_maskrcnn(
            cfg, lambda s: None, url="http://127.0.0.1:9/x"
        )
    assert seg is None and thread is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert "no Mask R-CNN segmenter" in line
    assert ("offline" in line) == (why == "offline")


def test_a_failed_download_is_one_log_line_and_no_segmenter(hub, caplog):
    ready = []
    with caplog.at_level(logging.WARNING):
        seg, thread = maskrcnn_source.start_maskrcnn(
            MaskRCNNConfig(), ready.append, url="http://127.0.0.1:9/w.pth", timeout=2
        )
        thread.join(10)
    assert seg is None and not ready
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "no Mask R-CNN segmenter" in line and "cannot download http://127.0.0.1:9/w.pth" in line
    assert not hub_cache_weights_path().exists()


def test_weights_already_in_the_cache_load_at_once(hub, server):
    path = hub_cache_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD)
    seg, thread = maskrcnn_source.start_maskrcnn(MaskRCNNConfig(), lambda s: None)
    assert seg is not None and thread is None and server.hits == []


def test_offline_from_the_flag_the_settings_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTAR_LS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    parse = get_args_parser().parse_args
    assert not serve_config(parse(["serve", "--checkpoint", "m.pt"])).maskrcnn.offline
    assert serve_config(parse(["serve", "--checkpoint", "m.pt", "--offline"])).maskrcnn.offline
    settings = tmp_path / "s.yaml"
    settings.write_text("serve:\n  maskrcnn:\n    offline: true\n")
    args = parse(["serve", "--checkpoint", "m.pt", "--config", str(settings)])
    assert serve_config(args).maskrcnn.offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert serve_config(parse(["serve", "--checkpoint", "m.pt"])).maskrcnn.offline
    assert offline_from_env({"ROBUSTAR_LS_OFFLINE": "true"})
    assert not offline_from_env({"ROBUSTAR_LS_OFFLINE": "0", "HF_HUB_OFFLINE": ""})
