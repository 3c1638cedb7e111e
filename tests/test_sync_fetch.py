"""The sync fetches only annotated tasks (and its manifest's), without the fields it does not
read; the result is the one a fetch of every task gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustar_ls.config import SyncConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore
from robustar_ls.labelstudio.client import fetch_annotated_tasks
from robustar_ls.labelstudio.client.sdk import RetryPolicy
from robustar_ls.labelstudio.client.tasks import SYNC_OMIT
from robustar_ls.labelstudio.sync import sync_masks
from tests.fake_ls import FakeClient, annotation, box, random_train_images, region, task

STAMP = "2026-01-01T00:00:00Z"


@pytest.fixture
def dataset(tmp_path: Path) -> ImageFolderSplits:
    random_train_images(tmp_path / "ds", per_class=4, seed=1)
    return ImageFolderSplits.open(tmp_path / "ds")


def project_tasks() -> list[dict]:
    """Two masks, one cancelled annotation, one annotation without a Spurious region, and
    four tasks nobody annotated."""
    tasks = [
        task(1, "a/0.png", [annotation(10, STAMP, [region(box(0, 3, 0, 4))])]),
        task(2, "a/1.png", []),
        task(3, "a/2.png", [annotation(11, STAMP, [region(box(0, 1, 0, 1))], cancelled=True)]),
        task(4, "a/3.png", []),
        task(5, "b/0.png", [annotation(12, STAMP, [])]),
        task(6, "b/1.png", []),
        task(7, "b/2.png", [annotation(13, STAMP, [region(box(2, 6, 4, 8))])]),
        task(8, "b/3.png", []),
    ]
    return tasks


def test_sync_asks_only_for_annotated_tasks_and_the_fields_it_reads(dataset, tmp_path):
    client = FakeClient(project_tasks(), filtering=True)
    sync_masks(client, 7, dataset, MaskStore(tmp_path / "masks"), SyncConfig(page_size=2))
    first = client.tasks.queries[0]
    items = {(i["filter"], i["operator"], i["value"]) for i in first["filters"]["items"]}
    assert first["filters"]["conjunction"] == "or"
    assert items == {
        ("filter:tasks:total_annotations", "greater", 0),
        ("filter:tasks:cancelled_annotations", "greater", 0),
    }
    assert client.tasks.calls == [1, 2]  # 4 annotated tasks in pages of 2, not 8 tasks
    assert "predictions" in client.tasks.omitted[0] and "drafts" in client.tasks.omitted[0]


def test_filtered_sync_gives_the_result_of_a_full_fetch(dataset, tmp_path):
    reports = {}
    for filtering in (False, True):
        store = MaskStore(tmp_path / f"masks{filtering}")
        reports[filtering] = sync_masks(
            FakeClient(project_tasks(), filtering), 7, dataset, store, SyncConfig(page_size=3)
        ).to_dict()
    assert reports[True] == reports[False]
    assert reports[True]["added"] == ["a/0.png", "b/0.png", "b/2.png"]
    assert reports[True]["negatives"] == ["b/0.png"]  # the annotation without a Spurious region
    assert reports[True]["tasks"] == 8  # every task of the project, not only those fetched


def test_deleted_annotation_still_removes_its_mask(dataset, tmp_path):
    store = MaskStore(tmp_path / "masks")
    tasks = project_tasks()
    sync_masks(FakeClient(tasks, filtering=True), 7, dataset, store)
    assert store.has("a/0.png")
    tasks[0]["annotations"] = []  # deleted in Label Studio: no longer an annotated task
    client = FakeClient(tasks, filtering=True)
    report = sync_masks(client, 7, dataset, store)
    assert report.removed == ["a/0.png"] and not store.has("a/0.png")
    assert client.tasks.queries[-1] == {"selectedItems": {"all": False, "included": [1]}}


def test_a_task_missed_by_the_listing_is_read_by_id_and_kept(dataset, tmp_path):
    store = MaskStore(tmp_path / "masks")
    sync_masks(FakeClient(project_tasks(), filtering=True), 7, dataset, store)
    client = FakeClient(project_tasks(), filtering=True)
    listed = client.tasks.matching

    def miss_task_1(query):  # e.g. it moved onto an earlier page while paging
        found = listed(query)
        return found if "selectedItems" in (query or {}) else [t for t in found if t["id"] != 1]

    client.tasks.matching = miss_task_1
    report = sync_masks(client, 7, dataset, store)
    assert report.removed == [] and report.unchanged == ["a/0.png", "b/0.png", "b/2.png"]
    assert store.has("a/0.png")


def test_fetch_annotated_tasks_reads_rechecks_in_chunks(monkeypatch):
    monkeypatch.setattr("robustar_ls.labelstudio.client.tasks.IDS_PER_QUERY", 2)
    client = FakeClient(project_tasks(), filtering=True)
    tasks = fetch_annotated_tasks(client, 7, 100, RetryPolicy(), recheck=[2, 4, 6, 1])
    assert [t["id"] for t in tasks] == [1, 2, 3, 4, 5, 6, 7]
    assert set(client.tasks.omitted) == {SYNC_OMIT} and {"predictions", "drafts"} <= set(
        SYNC_OMIT.split(",")
    )
    by_id = [q["selectedItems"]["included"] for q in client.tasks.queries[1:]]
    assert by_id == [[2, 4], [6]]  # task 1 was listed already
