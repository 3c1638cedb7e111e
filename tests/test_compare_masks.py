"""bench/compare_masks.py's plumbing, with a fake detector standing in for the COCO weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from backend_support import BrightObjects, two_tone, write_png

from robustar_ls.models.maskrcnn import MaskRCNNSegmenter

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "compare_masks.py"


class Unsure(BrightObjects):
    def forward(self, images):
        return [{**d, "scores": d["scores"] * 0} for d in super().forward(images)]


@pytest.fixture
def compare(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as `python bench/compare_masks.py` has it
    spec = importlib.util.spec_from_file_location("compare_masks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = []

    def fake_from_config(cfg):
        built.append(cfg)
        # the COCO settings' "model" scores every instance 0: it finds no object
        return MaskRCNNSegmenter(Unsure() if cfg.min_size == 800 else BrightObjects(), cfg)

    monkeypatch.setattr(MaskRCNNSegmenter, "from_config", staticmethod(fake_from_config))
    return module, built


def test_compares_the_served_settings_with_cocos(compare, tmp_path):
    module, built = compare
    write_png(tmp_path / "imgs" / "a.png", two_tone())
    write_png(tmp_path / "imgs" / "sub" / "b.jpg.png", two_tone(20, 12, (2, 3, 9, 8)))
    args = module.get_args_parser().parse_args(
        ["--images", str(tmp_path / "imgs"), "--rpn-post", "50", "--weights", "w.pth"]
    )
    report = module.main(args)
    fast, coco = built
    assert (fast.rpn_post_nms_top_n, fast.min_size, fast.weights) == (50, 448, "w.pth")
    assert (coco.rpn_post_nms_top_n, coco.min_size, coco.detections_per_img) == (1000, 800, 100)
    assert report["images"] == 2 and report["settings"]["rpn_post_nms_top_n"] == 50
    assert report["mean_iou"] == 0.0 and report["worst_iou"] == 0.0  # COCO's found nothing


def test_iou_of_empty_masks_is_one(compare):
    module, _ = compare
    empty = np.zeros((3, 3), bool)
    assert module.iou(empty, empty) == 1.0
    assert module.iou(np.eye(3, dtype=bool), np.ones((3, 3), bool)) == pytest.approx(1 / 3)
