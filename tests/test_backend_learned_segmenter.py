"""serve's "Spurious" pre-annotation from the learned segmenter (issue 12, part 2)."""

from __future__ import annotations

import os

import numpy as np
import torch
from backend_support import make_backend, task

from robustar_ls.backend.build import build_predictor, learned_segmenter
from robustar_ls.backend.spurious_source import LearnedSegmenterHolder
from robustar_ls.config import ServeConfig, SpuriousSegmenterConfig
from robustar_ls.labelstudio.brush import rle_to_mask
from robustar_ls.models.spurious_segmenter import (
    SpuriousSegmenter,
    default_segmenter_path,
    mask_confidence,
)


def spurious(prediction):
    return [
        r
        for r in prediction["result"]
        if r["type"] == "brushlabels" and r["value"]["brushlabels"] == ["Spurious"]
    ]


def summary(prediction):
    return next(r for r in prediction["result"] if r["type"] == "textarea")["value"]["text"][0]


def save_segmenter(path, bias: float, parent=None) -> SpuriousSegmenter:
    """An untrained tiny segmenter whose output is pushed to all-spurious (bias > 0)."""
    seg = SpuriousSegmenter.create(SpuriousSegmenterConfig(size=16))
    seg.parent_version = parent
    last = [m for m in seg.net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(bias)
    seg.save(path)
    return seg


def test_learned_segmenter_makes_the_spurious_region_with_its_confidence(tmp_path):
    backend = make_backend(tmp_path)  # Mask R-CNN stand-in present: the learned one wins
    path = tmp_path / "seg.pt"
    seg = save_segmenter(path, bias=4.0)
    backend.predictor.learned = LearnedSegmenterHolder(path)
    pred = backend.predictor.predict([task("ds/train/circle/c0.png")])[0]
    (region,) = spurious(pred)
    mask = rle_to_mask(region["value"]["rle"], 16, 24)
    assert mask.all()  # the bias makes every pixel spurious
    expected = mask_confidence(seg.predict_proba([np.zeros((16, 24, 3), np.uint8)])[0])
    assert region["score"] == round(expected, 4)
    assert summary(pred).endswith(f"Spurious: learned segmenter {seg.version}")
    assert pred["model_version"].endswith(f"+seg-{seg.version}")


def test_mask_rcnn_is_the_fallback_and_is_named(tmp_path):
    backend = make_backend(tmp_path)
    backend.predictor.learned = LearnedSegmenterHolder(tmp_path / "none-yet.pt")
    pred = backend.predictor.predict([task("ds/train/circle/c0.png")])[0]
    (region,) = spurious(pred)
    assert "score" not in region
    assert summary(pred).endswith("Spurious: Mask R-CNN")
    assert "+seg-" not in pred["model_version"]


def test_a_retrained_segmenter_is_picked_up_and_changes_the_version(tmp_path):
    backend = make_backend(tmp_path)
    path = tmp_path / "seg.pt"
    first = save_segmenter(path, bias=4.0)
    backend.predictor.learned = LearnedSegmenterHolder(path)
    before = backend.predictor.predict([task("ds/train/circle/c0.png")])[0]
    second = save_segmenter(path, bias=-4.0, parent=first.version)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks
    after = backend.predictor.predict([task("ds/train/circle/c0.png")])[0]
    assert before["model_version"] != after["model_version"]
    assert after["model_version"].endswith(f"+seg-{second.version}")
    assert not rle_to_mask(spurious(after)[0]["value"]["rle"], 16, 24).any()
    path.unlink()
    gone = backend.predictor.predict([task("ds/train/circle/c0.png")])[0]
    assert summary(gone).endswith("Spurious: Mask R-CNN")


def test_a_broken_file_keeps_the_loaded_segmenter(tmp_path):
    path = tmp_path / "seg.pt"
    seg = save_segmenter(path, bias=1.0)
    holder = LearnedSegmenterHolder(path)
    assert holder.current().version == seg.version
    path.write_bytes(b"not a segmenter at all")
    assert holder.current().version == seg.version
    assert LearnedSegmenterHolder(path).current() is None


def test_serve_settings_choose_the_learned_segmenter_file(tmp_path):
    assert learned_segmenter(ServeConfig()) is None
    holder = learned_segmenter(ServeConfig(data=str(tmp_path)))
    assert holder.path == default_segmenter_path(tmp_path)
    holder = learned_segmenter(ServeConfig(data=str(tmp_path), spurious_segmenter="x.pt"))
    assert str(holder.path) == "x.pt"


def test_build_predictor_serves_the_dataset_segmenter(tmp_path):
    backend = make_backend(tmp_path)
    data = tmp_path / "data"
    seg = save_segmenter(default_segmenter_path(data), bias=4.0)
    cfg = ServeConfig(
        checkpoint=str(backend.checkpoint),
        document_root=str(backend.root),
        use_maskrcnn=False,
        data=str(data),
        device="cpu",
        cache_dir=str(tmp_path / "c"),
    )
    predictor = build_predictor(cfg)
    assert predictor.model_version.endswith(f"+seg-{seg.version}")
    pred = predictor.predict([task("ds/train/circle/c0.png")])[0]
    assert len(spurious(pred)) == 1
