"""A fake label-studio-sdk client and builders of Label Studio tasks, for unit tests."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from robustar_ls.labelstudio.brush import mask_to_rle
from robustar_ls.labelstudio.config import default_label_config

W, H = 8, 6  # default size of the test images


class ApiError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code


class FakeTasks:
    """``client.tasks.list``. By default it ignores the Data Manager ``query`` (every task, as
    an old Label Studio would): a sync must give the same result either way. With
    ``filtering`` it applies the two queries the sync sends (annotated tasks; tasks by id)."""

    def __init__(self, tasks: list[dict], filtering: bool = False) -> None:
        self.tasks = tasks
        self.filtering = filtering
        self.calls: list[int] = []
        self.queries: list[dict | None] = []  # the decoded query of each call
        self.omitted: list[str] = []  # the ``omit`` of each call
        self.fail: dict[int, Exception] = {}  # page -> error raised every time

    def list(self, *, project, fields, page, page_size, request_options=None, query=None):
        assert request_options["max_retries"] == 0  # one retry policy: ours
        assert fields == "all"
        self.calls.append(page)
        self.queries.append(json.loads(query) if query is not None else None)
        extra = request_options.get("additional_query_parameters") or {}
        self.omitted.append(extra.get("omit", ""))
        if page in self.fail:
            raise self.fail[page]
        matching = self.matching(self.queries[-1])
        items = matching[(page - 1) * page_size : page * page_size]
        omit = set(self.omitted[-1].split(","))
        items = [{k: v for k, v in t.items() if k not in omit} for t in items]
        return SimpleNamespace(items=items, response=SimpleNamespace(total=len(matching)))

    def matching(self, query: dict | None) -> list[dict]:
        if not self.filtering or query is None:
            return self.tasks
        if "selectedItems" in query:
            ids = set(query["selectedItems"]["included"])
            return [t for t in self.tasks if t["id"] in ids]
        columns = {item["filter"] for item in query["filters"]["items"]}
        assert columns == {"filter:tasks:total_annotations", "filter:tasks:cancelled_annotations"}
        return [t for t in self.tasks if t.get("annotations")]


class FakeClient:
    def __init__(self, tasks: list[dict], filtering: bool = False) -> None:
        self.tasks = FakeTasks(tasks, filtering)
        self.projects = SimpleNamespace(
            get=lambda id, request_options=None: SimpleNamespace(
                id=id, label_config=default_label_config(), task_number=len(tasks)
            )
        )
        self._client_wrapper = SimpleNamespace(get_base_url=lambda: "http://ls.test:1234")


def region(mask: np.ndarray, label: str = "Spurious", from_name: str = "spurious") -> dict:
    return {
        "from_name": from_name,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": mask.shape[1],
        "original_height": mask.shape[0],
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]},
    }


def annotation(ann_id: int, updated_at: str, result: list, cancelled: bool = False) -> dict:
    return {"id": ann_id, "updated_at": updated_at, "was_cancelled": cancelled, "result": result}


def task(task_id: int, relpath: str, annotations: list) -> dict:
    return {
        "id": task_id,
        "data": {"image": f"/data/local-files/?d=ds/train/{relpath}", "relpath": relpath},
        "annotations": annotations,
    }


def box(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def random_train_images(root, per_class: int, seed: int) -> None:
    """``root/train/{a,b}/{0..per_class-1}.png``: random H x W images, the tasks' relpaths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        for i in range(per_class):
            path = root / "train" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
