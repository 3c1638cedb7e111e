"""Unit tests of robustar_ls.labelstudio.sync against a fake label-studio-sdk client."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from robustar_ls.config import SyncConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore
from robustar_ls.labelstudio.sync import LabelStudioUnavailable, SyncError, sync_masks
from tests.fake_ls import (
    ApiError,
    FakeClient,
    H,
    W,
    annotation,
    box,
    random_train_images,
    region,
    task,
)


@pytest.fixture
def dataset(tmp_path: Path) -> ImageFolderSplits:
    random_train_images(tmp_path / "ds", per_class=3, seed=0)
    return ImageFolderSplits.open(tmp_path / "ds")


@pytest.fixture
def store(tmp_path: Path) -> MaskStore:
    return MaskStore(tmp_path / "ds" / "masks")


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def no_sleep(_seconds: float) -> None:
    return None


# -- sync_masks -----------------------------------------------------------------------------


def test_sync_adds_masks_then_is_idempotent(dataset, store, monkeypatch):
    m0, m1 = box(0, 3, 0, 4), box(2, 6, 4, 8)
    tasks = [
        task(1, "a/0.png", [annotation(10, "2024-01-01T00:00:00Z", [region(m0)])]),
        task(2, "b/1.png", [annotation(11, "2024-01-01T00:00:00Z", [region(m1)])]),
        task(3, "a/1.png", []),
    ]
    client = FakeClient(tasks)
    report = sync_masks(client, 7, dataset, store, SyncConfig(page_size=2))
    assert sorted(report.added) == ["a/0.png", "b/1.png"]
    assert report.errors == [] and report.removed == [] and report.updated == []
    assert client.tasks.calls == [1, 2]
    np.testing.assert_array_equal(store.read("a/0.png"), m0 > 0)
    np.testing.assert_array_equal(store.read("b/1.png"), m1 > 0)
    assert store.read_manifest()["a/0.png"] == {
        "task_id": 1,
        "annotation_id": 10,
        "updated_at": "2024-01-01T00:00:00Z",
    }

    def refuse(*args, **kwargs):
        raise AssertionError("a sync with nothing new wrote")

    monkeypatch.setattr(MaskStore, "write", refuse)
    monkeypatch.setattr(MaskStore, "write_manifest", refuse)
    monkeypatch.setattr(MaskStore, "delete", refuse)
    again = sync_masks(client, 7, dataset, store, SyncConfig(page_size=2))
    assert not again.changed
    assert sorted(again.unchanged) == ["a/0.png", "b/1.png"]
    assert "nothing written" in again.summary()


def test_sync_edit_replaces_and_delete_removes(dataset, store):
    m0, m0_edited = box(0, 3, 0, 4), box(3, 6, 1, 2)
    tasks = [
        task(1, "a/0.png", [annotation(10, "2024-01-01T00:00:00Z", [region(m0)])]),
        task(2, "a/2.png", [annotation(11, "2024-01-01T00:00:00Z", [region(m0)])]),
    ]
    client = FakeClient(tasks)
    sync_masks(client, 7, dataset, store)
    tasks[0]["annotations"] = [annotation(10, "2024-01-02T00:00:00Z", [region(m0_edited)])]
    tasks[1]["annotations"] = []
    report = sync_masks(client, 7, dataset, store)
    assert report.updated == ["a/0.png"] and report.removed == ["a/2.png"]
    np.testing.assert_array_equal(store.read("a/0.png"), m0_edited > 0)
    assert not store.has("a/2.png")
    assert set(store.read_manifest()) == {"a/0.png"}


def test_sync_removes_when_only_cancelled_annotations_remain(dataset, store):
    first = annotation(10, "2024-01-01T00:00:00Z", [region(box(0, 1, 0, 1))])
    tasks = [task(1, "a/0.png", [first])]
    client = FakeClient(tasks)
    sync_masks(client, 7, dataset, store)
    tasks[0]["annotations"] = [annotation(12, "2024-01-03T00:00:00Z", [], cancelled=True)]
    report = sync_masks(client, 7, dataset, store)
    assert report.removed == ["a/0.png"] and not store.has("a/0.png")
    assert report.skipped[0]["task_id"] == 1 and "cancelled" in report.skipped[0]["reason"]


def test_sync_annotation_without_spurious_region_stores_a_negative(dataset, store):
    tasks = [task(1, "a/0.png", [annotation(10, "t1", [])])]
    client = FakeClient(tasks)
    report = sync_masks(client, 7, dataset, store)
    assert report.added == ["a/0.png"] and report.negatives == ["a/0.png"]
    assert report.skipped == [] and report.counts()["negatives"] == 1
    assert "1 negatives" in report.summary()
    negative = store.read("a/0.png")
    assert negative.shape == (H, W) and not negative.any()
    assert store.read_manifest()["a/0.png"]["annotation_id"] == 10
    again = sync_masks(client, 7, dataset, store)
    assert again.unchanged == ["a/0.png"] and again.negatives == ["a/0.png"]
    assert not again.changed


def test_sync_annotation_erased_to_no_spurious_region_becomes_a_negative(dataset, store):
    tasks = [task(1, "a/0.png", [annotation(10, "t1", [region(box(0, 1, 0, 1))])])]
    client = FakeClient(tasks)
    sync_masks(client, 7, dataset, store)
    assert store.read("a/0.png").any()
    tasks[0]["annotations"] = [
        annotation(11, "2030-01-01T00:00:00Z", [region(box(0, 1, 0, 1), label="Model attention")])
    ]
    report = sync_masks(client, 7, dataset, store)
    assert report.updated == ["a/0.png"] and report.negatives == ["a/0.png"]
    assert report.removed == [] and store.has("a/0.png") and not store.read("a/0.png").any()


def test_sync_negative_is_removed_with_its_annotation(dataset, store):
    tasks = [task(1, "a/0.png", [annotation(10, "t1", [])])]
    client = FakeClient(tasks)
    sync_masks(client, 7, dataset, store)
    tasks[0]["annotations"] = []
    report = sync_masks(client, 7, dataset, store)
    assert report.removed == ["a/0.png"] and not store.has("a/0.png")
    assert store.read_manifest() == {}


def test_sync_never_deletes_masks_it_did_not_write(dataset, store):
    hand_made = box(1, 2, 1, 2)
    store.write("b/2.png", hand_made)
    store.write_manifest({"b/2.png": {"source": "hand"}})
    report = sync_masks(FakeClient([]), 7, dataset, store)
    assert report.removed == [] and store.has("b/2.png")
    np.testing.assert_array_equal(store.read("b/2.png"), hand_made > 0)


def test_sync_wrong_size_is_an_error_and_not_written(dataset, store):
    wrong = box(0, 2, 0, 2, h=H + 2, w=W)
    tasks = [
        task(1, "a/0.png", [annotation(10, "t", [region(wrong)])]),
        task(2, "a/1.png", [annotation(11, "t", [region(box(0, 1, 0, 1))])]),
    ]
    report = sync_masks(FakeClient(tasks), 7, dataset, store)
    assert report.added == ["a/1.png"]
    assert [e["task_id"] for e in report.errors] == [1]
    error = report.errors[0]["error"]
    assert "task 1" in error and "a/0.png" in error and f"{W}x{H + 2}" in error
    assert not store.has("a/0.png") and "a/0.png" not in store.read_manifest()


def test_sync_unknown_image_is_an_error(dataset, store):
    tasks = [task(1, "zzz/0.png", [annotation(10, "t", [region(box(0, 1, 0, 1))])])]
    report = sync_masks(FakeClient(tasks), 7, dataset, store)
    assert report.errors[0]["task_id"] == 1 and "shows no image" in report.errors[0]["error"]
    assert list(store.relpaths()) == []


def test_sync_dry_run_reports_and_writes_nothing(dataset, store):
    store.write("a/2.png", box(0, 1, 0, 1))
    store.write_manifest({"a/2.png": {"task_id": 9, "annotation_id": 1, "updated_at": "t"}})
    before = snapshot(store.root)
    tasks = [task(1, "a/0.png", [annotation(10, "t", [region(box(0, 1, 0, 1))])])]
    report = sync_masks(FakeClient(tasks), 7, dataset, store, dry_run=True)
    assert report.dry_run and report.added == ["a/0.png"] and report.removed == ["a/2.png"]
    assert snapshot(store.root) == before


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("connection refused"), ApiError(502)],
    ids=["connection", "5xx"],
)
def test_sync_label_studio_dies_mid_fetch_leaves_store_unchanged(dataset, store, error):
    tasks = [
        task(i + 1, rel, [annotation(10 + i, "t", [region(box(0, 2, 0, 2))])])
        for i, rel in enumerate(["a/0.png", "a/1.png", "b/0.png"])
    ]
    store.write("a/2.png", box(0, 1, 0, 1))
    store.write_manifest({"a/2.png": {"task_id": 9, "annotation_id": 1, "updated_at": "t"}})
    before = snapshot(store.root)
    client = FakeClient(tasks)
    client.tasks.fail[2] = error
    sleeps: list[float] = []
    stopped = r"Label Studio at http://ls.test:1234 stopped answering"
    with pytest.raises(LabelStudioUnavailable, match=stopped):
        cfg = SyncConfig(page_size=2, retries=3, backoff=0.25)
        sync_masks(client, 7, dataset, store, cfg, sleep=sleeps.append)
    assert sleeps == [0.25, 0.5, 1.0]  # exponential backoff
    assert client.tasks.calls == [1, 2, 2, 2, 2]
    assert snapshot(store.root) == before


def test_sync_retries_then_succeeds(dataset, store):
    tasks = [task(1, "a/0.png", [annotation(10, "t", [region(box(0, 1, 0, 1))])])]
    client = FakeClient(tasks)
    original = client.tasks.list
    failures = iter([httpx.ReadTimeout("slow"), ApiError(503)])

    def flaky(**kwargs):
        err = next(failures, None)
        if err is not None:
            raise err
        return original(**kwargs)

    client.tasks.list = flaky
    report = sync_masks(client, 7, dataset, store, SyncConfig(retries=2), sleep=no_sleep)
    assert report.added == ["a/0.png"]


def test_sync_client_errors_are_not_retried(dataset, store):
    client = FakeClient([])
    client.tasks.fail[1] = ApiError(403)
    sleeps: list[float] = []
    with pytest.raises(SyncError, match="refused page 1 .*HTTP 403"):
        sync_masks(client, 7, dataset, store, SyncConfig(retries=3), sleep=sleeps.append)
    assert client.tasks.calls == [1] and sleeps == []


def test_sync_failed_write_records_what_was_done(dataset, store, monkeypatch):
    tasks = [
        task(1, "a/0.png", [annotation(10, "t", [region(box(0, 1, 0, 1))])]),
        task(2, "a/1.png", [annotation(11, "t", [region(box(0, 1, 0, 1))])]),
    ]
    original = MaskStore.write

    def write_once(self, relpath, mask):
        if relpath == "a/1.png":
            raise OSError("disk full")
        return original(self, relpath, mask)

    monkeypatch.setattr(MaskStore, "write", write_once)
    with pytest.raises(OSError, match="disk full"):
        sync_masks(FakeClient(tasks), 7, dataset, store)
    assert set(store.read_manifest()) == {"a/0.png"} and store.has("a/0.png")


def test_annotations_on_other_splits_are_ignored_and_reported(dataset, store):
    m0 = box(0, 3, 0, 4)
    stamp = "2024-01-01T00:00:00Z"
    on_test = task(2, "a/0.png", [annotation(11, stamp, [region(box(2, 6, 4, 8))])])
    on_test["data"].update(split="test", image="/data/local-files/?d=ds/test/a/0.png")
    on_val = task(3, "b/0.png", [annotation(12, stamp, [region(m0)])])
    on_val["data"]["split"] = "val"
    unannotated = task(4, "b/1.png", [])
    unannotated["data"]["split"] = "test"
    tasks = [
        task(1, "a/0.png", [annotation(10, stamp, [region(m0)])]),
        on_test,
        on_val,
        unannotated,
    ]
    report = sync_masks(FakeClient(tasks), 7, dataset, store, SyncConfig(page_size=10))
    assert report.added == ["a/0.png"] and report.errors == []
    np.testing.assert_array_equal(store.read("a/0.png"), m0 > 0)  # the train task's mask
    assert not store.has("b/0.png")
    assert report.ignored == [
        {"task_id": 2, "relpath": "a/0.png", "split": "test"},
        {"task_id": 3, "relpath": "b/0.png", "split": "val"},
    ]
    assert report.counts()["ignored"] == 2
    assert "2 annotated non-training tasks ignored" in report.summary()
