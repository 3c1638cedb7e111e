"""A sync over a dataset opened lazily (`ImageFolderSplits.open(lazy=True)`, what
`sync-train` does) decides exactly what it decides over the listed dataset, and looks up
only the annotated images instead of listing the folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustar_ls.data import folders
from robustar_ls.data.folders import DatasetError, ImageFolderSplits, list_samples, sample_at
from robustar_ls.data.masks import MaskStore
from robustar_ls.labelstudio.sync import sync_masks
from tests.fake_ls import FakeClient, H, W, annotation, box, region, task


def _png(path: Path, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (1, 2, 3)).save(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """train/ with nested, hidden, upper-case, non-image, linked files and a linked folder."""
    ds = tmp_path / "ds"
    for rel in ("a/0.png", "a/1.png", "a/sub/2.PNG", "a/.h.png", "b/0.jpg", "b/1.png"):
        _png(ds / "train" / rel)
    _png(ds / "train" / "a" / "big.png", (W + 2, H))
    _png(tmp_path / "outside" / "x.png")
    (ds / "train" / "b" / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "outside", ds / "train" / "b" / "linked")
    os.symlink(tmp_path / "outside" / "x.png", ds / "train" / "b" / "file.png")
    (ds / "train" / ".hidden").mkdir()
    _png(ds / "train" / ".hidden" / "0.png")
    return ds


def test_sample_at_finds_exactly_what_the_listing_lists(root):
    split_dir, classes = root / "train", ["a", "b"]
    listed = {s.relpath: s for s in list_samples(split_dir, classes)}
    assert "b/file.png" in listed and "b/linked/x.png" not in listed  # the rule being matched
    candidates = [*listed, "b/linked/x.png", "b/notes.txt", ".hidden/0.png", "a/../b/0.jpg"]
    candidates += ["a//0.png", "a/./0.png", "a", "a/missing.png", "c/0.png", "a/sub", ""]
    for rel in candidates:
        assert sample_at(split_dir, classes, rel) == listed.get(rel), rel


def test_lazy_open_lists_nothing_and_keeps_the_errors(root, tmp_path, monkeypatch):
    calls = []
    real = folders.list_samples
    monkeypatch.setattr(folders, "list_samples", lambda *a: calls.append(a) or real(*a))
    lazy = ImageFolderSplits.open(root, lazy=True)
    assert calls == [] and lazy.images("train")["a/sub/2.PNG"].label == 0
    assert calls == []
    assert [s.relpath for s in lazy.splits["train"]] == [
        s.relpath for s in ImageFolderSplits.open(root).splits["train"]
    ]
    assert len(calls) == 2  # the lazy read, then the eager open
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    for lazy_flag in (False, True):
        with pytest.raises(DatasetError, match="holds no images"):
            ImageFolderSplits.open(tmp_path / "empty", lazy=lazy_flag)


def _tasks() -> list[dict]:
    def ann(ann_id: int, mask: np.ndarray) -> list[dict]:
        return [annotation(ann_id, "2024-01-01T00:00:00Z", [region(mask)])]

    url = task(6, "", ann(16, box(0, 1, 0, 1)))
    url["data"] = {"image": "/data/local-files/?d=ds/train/b/1.png"}  # no relpath: the URL
    other = task(7, "a/1.png", ann(17, box(0, 1, 0, 1)))
    other["data"]["split"] = "test"
    return [
        task(1, "a/0.png", ann(11, box(0, 3, 0, 4))),
        task(2, "a/sub/2.PNG", ann(12, box(1, 2, 1, 2))),
        task(3, "a/big.png", ann(13, box(0, 1, 0, 1))),  # wrong size: an error
        task(4, "b/linked/x.png", ann(14, box(0, 1, 0, 1))),  # not a training image
        task(5, "b/0.jpg", ann(15, box(0, 1, 0, 1))),
        url,
        other,
        task(8, "b/1.png", []),
    ]


@pytest.mark.parametrize("dry_run", [True, False])
def test_sync_over_lazy_data_equals_sync_over_listed_data(root, tmp_path, dry_run):
    reports = []
    for lazy in (False, True):
        data = ImageFolderSplits.open(root, lazy=lazy)
        store = MaskStore(tmp_path / f"masks-{lazy}")
        report = sync_masks(FakeClient(_tasks()), 7, data, store, dry_run=dry_run)
        reports.append((report.to_dict(), sorted(store.relpaths())))
        if lazy:
            assert not isinstance(data.splits, dict) and data.splits.listed("train") is None
    assert reports[0] == reports[1]
    report = reports[0][0]
    assert sorted(report["added"]) == ["a/0.png", "a/sub/2.PNG", "b/0.jpg", "b/1.png"]
    assert sorted(e["task_id"] for e in report["errors"]) == [3, 4]
