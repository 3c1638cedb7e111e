from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore
from robustar_ls.train.propagate import propagate_dataset, propagate_masks, write_propagated


class MapSegmenter:
    """Predicts, for an image whose first pixel's red value is k, the map ``MAPS[k]``."""

    version = "v1-fake"

    def __init__(self, maps):
        self.maps = maps
        self.seen = []

    def predict_proba(self, images):
        out = []
        for im in images:
            key = int(np.asarray(im)[0, 0, 0])
            self.seen.append(key)
            out.append(self.maps[key])
        return out


def _map(value_inside, value_outside=0.0, size=8):
    prob = np.full((size, size), value_outside, np.float32)
    prob[2:5, 2:5] = value_inside
    return prob


def _image(key, size=8):
    image = np.zeros((size, size, 3), np.uint8)
    image[0, 0, 0] = key
    return image


MAPS = {1: _map(0.99), 2: _map(0.7), 3: _map(0.99, 0.3), 4: np.zeros((8, 8), np.float32)}


def test_keeps_only_confident_non_empty_masks():
    seg = MapSegmenter(MAPS)
    pairs = [(f"c/{k}.png", _image(k)) for k in MAPS]
    result = propagate_masks(seg, pairs, threshold=0.9)
    assert set(result.masks) == {"c/1.png"}  # 2: undecided inside, 3: haze outside, 4: empty
    assert result.masks["c/1.png"].sum() == 9 and result.masks["c/1.png"].dtype == bool
    assert result.confidence["c/2.png"] == pytest.approx(0.7)
    assert result.confidence["c/4.png"] == 0.0
    lower = propagate_masks(MapSegmenter(MAPS), pairs, threshold=0.6)
    assert set(lower.masks) == {"c/1.png", "c/2.png"}


def test_expert_masks_win_and_are_never_predicted():
    seg = MapSegmenter(MAPS)
    pairs = [(f"c/{k}.png", _image(k)) for k in MAPS]
    result = propagate_masks(seg, pairs, expert={"c/1.png"}, threshold=0.5, batch_size=2)
    assert "c/1.png" not in result.masks and "c/1.png" not in result.confidence
    assert 1 not in seg.seen and result.expert_kept == 1
    assert result.summary()["propagated"] == 1  # c/2.png at threshold 0.5


def test_rejects_a_threshold_outside_zero_one():
    with pytest.raises(ValueError, match="within"):
        propagate_masks(MapSegmenter(MAPS), [], threshold=1.5)


def test_propagate_dataset_skips_stored_masks_and_writes_a_separate_store(tmp_path):
    for k in (1, 2, 3):
        (tmp_path / "d/train/c").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(k)).save(tmp_path / f"d/train/c/{k}.png")
    data = ImageFolderSplits.open(tmp_path / "d")
    expert = MaskStore(tmp_path / "masks")
    expert.write("c/3.png", np.zeros((8, 8), bool))  # reviewed, nothing spurious: stays empty
    seg = MapSegmenter({1: _map(0.99), 2: _map(0.99), 3: _map(0.99)})
    result = propagate_dataset(seg, data, expert, threshold=0.9)
    assert set(result.masks) == {"c/1.png", "c/2.png"} and result.expert_kept == 1
    paths = write_propagated(result, MaskStore(tmp_path / "propagated"))
    assert MaskStore(tmp_path / "propagated").read("c/1.png").sum() == 9
    assert set(paths) == {"c/1.png", "c/2.png"}
    assert not expert.read("c/3.png").any()
