"""sync_masks against a real Label Studio: annotations made through label-studio-sdk."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from PIL import Image

from robustar_ls.config import SyncConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore
from robustar_ls.labelstudio.brush import mask_to_rle
from robustar_ls.labelstudio.config import default_label_config
from robustar_ls.labelstudio.results import BrushRegion
from robustar_ls.labelstudio.sync import LabelStudioUnavailable, sync_masks

pytestmark = pytest.mark.e2e

W, H = 16, 12  # not square: a swapped width/height shows
IMAGES = ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]


def box(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def brush(mask: np.ndarray, label: str = "Spurious") -> dict:
    height, width = mask.shape
    return BrushRegion("spurious", "image", mask_to_rle(mask), label, width, height).to_dict()


class Project:
    """A fresh Label Studio project over a tiny dataset, one task per training image."""

    def __init__(self, client: LabelStudio, root: Path) -> None:
        self.client = client
        self.root = root
        rng = np.random.default_rng(0)
        for rel in IMAGES:
            path = root / "train" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
        self.data = ImageFolderSplits.open(root)
        self.store = MaskStore(root / "masks")
        title = f"sync-e2e-{uuid.uuid4().hex[:8]}"
        self.id = client.projects.create(title=title, label_config=default_label_config()).id
        tasks = []
        for rel in IMAGES:
            item = {
                "image": f"/data/local-files/?d={root.name}/train/{rel}",
                "relpath": rel,
                "saliency": "",
                "related_html": "",
                "summary": f"True class: {rel.split('/')[0]}",
            }
            if rel == "dog/1.png":
                del item["relpath"]  # mapped through the local-files path
            tasks.append(item)
        client.projects.import_tasks(id=self.id, request=tasks)
        listed = client.tasks.list(project=self.id, page_size=100).items
        self.task_of = {}
        for t in listed:
            rel = t.data.get("relpath") or "dog/1.png"
            self.task_of[rel] = t.id

    def annotate(self, rel: str, result: list, cancelled: bool = False) -> int:
        created = self.client.annotations.create(
            id=self.task_of[rel], result=result, was_cancelled=cancelled
        )
        return created.id

    def sync(self, dry_run: bool = False, **settings):
        cfg = SyncConfig(**settings)
        return sync_masks(self.client, self.id, self.data, self.store, cfg, dry_run=dry_run)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def project(label_studio, tmp_path) -> Project:
    return Project(label_studio.client("legacy"), tmp_path / f"ds{uuid.uuid4().hex[:6]}")


@pytest.mark.postgresql
def test_sync_pulls_spurious_masks_and_a_second_run_writes_nothing(project):
    a, b, attention = box(0, 4, 0, 6), box(6, 12, 10, 16), box(0, 12, 0, 16)
    project.annotate("cat/0.png", [brush(a), brush(b), brush(attention, "Model attention")])
    project.annotate("cat/1.png", [brush(b)])
    project.annotate("dog/1.png", [brush(a)])  # no relpath in the task data
    project.annotate("cat/2.png", [brush(a)], cancelled=True)
    project.annotate("dog/0.png", [brush(a)])
    project.annotate("dog/0.png", [brush(b)], cancelled=True)  # newer, but skipped

    report = project.sync(page_size=2)
    assert sorted(report.added) == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    assert report.errors == [] and report.removed == [] and report.tasks == len(IMAGES)
    assert [s["task_id"] for s in report.skipped] == [project.task_of["cat/2.png"]]
    np.testing.assert_array_equal(project.store.read("cat/0.png"), (a > 0) | (b > 0))
    np.testing.assert_array_equal(project.store.read("cat/1.png"), b > 0)
    np.testing.assert_array_equal(project.store.read("dog/0.png"), a > 0)
    np.testing.assert_array_equal(project.store.read("dog/1.png"), a > 0)
    entry = project.store.read_manifest()["cat/1.png"]
    assert entry["task_id"] == project.task_of["cat/1.png"] and entry["updated_at"]

    before = snapshot(project.store.root)
    again = project.sync(page_size=2)
    assert not again.changed and len(again.unchanged) == 4
    assert snapshot(project.store.root) == before


@pytest.mark.postgresql
def test_edits_newer_annotations_and_deletions_propagate(project):
    client = project.client
    first = project.annotate("cat/0.png", [brush(box(0, 2, 0, 2))])
    to_delete = project.annotate("cat/1.png", [brush(box(0, 2, 0, 2))])
    project.annotate("dog/0.png", [brush(box(0, 2, 0, 2))])
    assert len(project.sync().added) == 3

    edited = box(5, 9, 3, 12)
    client.annotations.update(id=first, result=[brush(edited)])
    client.annotations.delete(id=to_delete)
    newer = box(1, 3, 1, 15)
    project.annotate("dog/0.png", [brush(newer)])  # a second annotator, later: it wins

    report = project.sync()
    assert sorted(report.updated) == ["cat/0.png", "dog/0.png"]
    assert report.removed == ["cat/1.png"] and report.added == []
    np.testing.assert_array_equal(project.store.read("cat/0.png"), edited > 0)
    np.testing.assert_array_equal(project.store.read("dog/0.png"), newer > 0)
    assert not project.store.has("cat/1.png")
    assert set(project.store.read_manifest()) == {"cat/0.png", "dog/0.png"}


@pytest.mark.postgresql
def test_an_annotation_without_spurious_region_is_a_negative(project):
    project.annotate("cat/0.png", [brush(box(0, 4, 0, 6), "Model attention")])
    project.annotate("cat/1.png", [])  # submitted with nothing painted
    report = project.sync()
    assert sorted(report.added) == sorted(report.negatives) == ["cat/0.png", "cat/1.png"]
    assert report.skipped == [] and report.errors == []
    for rel in ("cat/0.png", "cat/1.png"):
        negative = project.store.read(rel)
        assert negative.shape == (H, W) and not negative.any()
    assert project.store.read_manifest()["cat/1.png"]["task_id"] == project.task_of["cat/1.png"]


def test_wrong_size_mask_is_an_error_and_not_written(project):
    project.annotate("cat/0.png", [brush(box(0, 2, 0, 2, h=W, w=H))])  # width/height swapped
    project.annotate("cat/1.png", [brush(box(0, 2, 0, 2))])
    report = project.sync()
    assert report.added == ["cat/1.png"]
    assert [e["task_id"] for e in report.errors] == [project.task_of["cat/0.png"]]
    assert "cat/0.png" in report.errors[0]["image"] and f"{H}x{W}" in report.errors[0]["error"]
    assert not project.store.has("cat/0.png")
    assert "cat/0.png" not in project.store.read_manifest()


def test_dry_run_changes_nothing(project):
    project.annotate("cat/0.png", [brush(box(0, 2, 0, 2))])
    report = project.sync(dry_run=True)
    assert report.dry_run and report.added == ["cat/0.png"]
    assert not project.store.root.exists()


def test_label_studio_dying_mid_sync_leaves_the_store_as_it_was(project, monkeypatch):
    project.annotate("cat/0.png", [brush(box(0, 2, 0, 2))])
    project.sync()
    for rel in ("cat/1.png", "cat/2.png", "dog/0.png"):
        project.annotate(rel, [brush(box(2, 4, 2, 4))])
    project.client.annotations.delete(
        id=project.client.tasks.get(id=project.task_of["cat/0.png"]).annotations[0]["id"]
    )
    before = snapshot(project.store.root)

    dead = LabelStudio(base_url="http://127.0.0.1:9", api_key="x")  # nothing listens on port 9
    real_list = project.client.tasks.list

    def list_dying_after_page_1(**kwargs):
        return real_list(**kwargs) if kwargs["page"] == 1 else dead.tasks.list(**kwargs)

    monkeypatch.setattr(project.client.tasks, "list", list_dying_after_page_1)
    with pytest.raises(LabelStudioUnavailable, match="stopped answering.*page 2"):
        project.sync(page_size=2, retries=2, backoff=0.01)
    assert snapshot(project.store.root) == before


def test_unreachable_label_studio_is_a_clear_error(project):
    dead = LabelStudio(base_url="http://127.0.0.1:9", api_key="x")
    with pytest.raises(LabelStudioUnavailable, match=r"Label Studio at http://127.0.0.1:9 stopped"):
        cfg = SyncConfig(retries=1, backoff=0.01)
        sync_masks(dead, project.id, project.data, project.store, cfg)
    assert not project.store.root.exists()


def test_sync_with_a_personal_access_token(label_studio, tmp_path):
    project = Project(label_studio.client("pat"), tmp_path / "pat")
    mask = box(2, 10, 4, 12)
    project.annotate("dog/0.png", [brush(mask)])
    report = project.sync()
    assert report.added == ["dog/0.png"] and report.errors == []
    np.testing.assert_array_equal(project.store.read("dog/0.png"), mask > 0)


@pytest.mark.postgresql
def test_annotations_on_test_images_are_ignored(project):
    """A test-split task (same relpath as a training image) is shown, never synced."""
    client = project.client
    test_task = {
        "image": f"/data/local-files/?d={project.root.name}/train/cat/0.png",
        "relpath": "cat/0.png",
        "split": "test",
        "saliency": "",
        "related_html": "",
    }
    created = client.projects.import_tasks(id=project.id, request=[test_task], return_task_ids=True)
    test_id = created.task_ids[0]
    client.annotations.create(id=test_id, result=[brush(box(0, 4, 0, 6))])
    train_mask = box(6, 12, 10, 16)
    project.annotate("cat/1.png", [brush(train_mask)])

    report = project.sync()
    assert report.added == ["cat/1.png"] and report.errors == []
    assert report.ignored == [{"task_id": test_id, "relpath": "cat/0.png", "split": "test"}]
    assert "1 annotated non-training tasks ignored" in report.summary()
    assert not project.store.has("cat/0.png")
    np.testing.assert_array_equal(project.store.read("cat/1.png"), train_mask > 0)


@pytest.mark.postgresql
def test_only_annotated_tasks_are_fetched_without_predictions_or_drafts(project):
    from robustar_ls.labelstudio.client import RetryPolicy, fetch_annotated_tasks

    project.annotate("cat/1.png", [brush(box(0, 4, 0, 6))])
    project.annotate("dog/0.png", [brush(box(0, 4, 0, 6))], cancelled=True)
    tasks = fetch_annotated_tasks(project.client, project.id, 2, RetryPolicy())
    assert [t["id"] for t in tasks] == sorted(
        project.task_of[rel] for rel in ("cat/1.png", "dog/0.png")
    )
    assert all(t.get("predictions") is None and t.get("drafts") is None for t in tasks)
    assert all(t["annotations"][0].get("result") is not None for t in tasks)  # not cut to ids
    again = fetch_annotated_tasks(
        project.client, project.id, 2, RetryPolicy(), recheck=[project.task_of["cat/2.png"]]
    )
    assert [t["id"] for t in again if t["data"].get("relpath") == "cat/2.png"] != []
    assert project.sync().tasks == len(IMAGES)
