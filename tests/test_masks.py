from __future__ import annotations

import numpy as np
import pytest

from robustar_ls.data.masks import MaskError, MaskStore


def test_write_read_delete(tmp_path):
    store = MaskStore(tmp_path / "masks")
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    path = store.write("cat/img01.jpg", mask)
    assert path == tmp_path / "masks" / "train" / "cat" / "img01.png"
    assert np.array_equal(store.read("cat/img01.jpg", size=(6, 4)), mask)
    assert list(store.relpaths()) == ["cat/img01.png"]
    with pytest.raises(MaskError, match="must have the image's size"):
        store.read("cat/img01.jpg", size=(4, 6))
    assert store.delete("cat/img01.jpg") and not store.has("cat/img01.jpg")
    with pytest.raises(MaskError, match="no mask"):
        store.read("cat/img01.jpg")


def test_graded_masks_are_thresholded_and_paths_confined(tmp_path):
    store = MaskStore(tmp_path)
    store.write("a/b.png", np.array([[0, 127, 128, 255]], dtype=np.uint8))
    assert store.read("a/b.png").tolist() == [[False, False, True, True]]
    with pytest.raises(MaskError, match="inside the store"):
        store.path_for("../escape.png")


def test_manifest_round_trip_and_corruption(tmp_path):
    store = MaskStore(tmp_path)
    assert store.read_manifest() == {}
    store.write_manifest({"a/b.png": {"task_id": 3}})
    assert store.read_manifest() == {"a/b.png": {"task_id": 3}}
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(MaskError, match="corrupt"):
        store.read_manifest()
