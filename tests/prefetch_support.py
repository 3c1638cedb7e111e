"""Fakes for the prefetch tests: a label-studio-sdk client holding tasks and predictions (the
calls ``robustar_ls.labelstudio.client.predictions`` makes), and a predictor."""

from __future__ import annotations

import json
from types import SimpleNamespace

from robustar_ls.labelstudio.config import default_label_config


class FakeStatusError(Exception):
    """An SDK ``ApiError`` stand-in (only ``status_code`` is read)."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class FakeSdkTasks:
    def __init__(self, sdk: FakeSdk) -> None:
        self.sdk = sdk
        self.queries: list[dict] = []

    def list(self, *, project, query, fields, include, page, page_size, request_options=None):
        assert fields == "all" and "predictions_model_versions" in include
        query = json.loads(query)
        self.queries.append(query)
        rows = [self.sdk.row(task_id) for task_id in sorted(self.sdk.data)]
        rows = [row for row in rows if _selected(row, query)]
        items = rows[(page - 1) * page_size : page * page_size]
        return SimpleNamespace(items=items, response=SimpleNamespace(total=len(rows)))


OPERATORS = {
    ("Number", "greater_or_equal"): lambda value, wanted: value >= wanted,
    ("Number", "less_or_equal"): lambda value, wanted: value <= wanted,
    ("String", "equal"): lambda value, wanted: value == wanted,
}


def _selected(row: dict, query: dict) -> bool:
    """The Data Manager filters the prefetch sends (task data fields, "and")."""
    if "selectedItems" in query:
        return row["id"] in query["selectedItems"]["included"]
    for item in query["filters"]["items"]:
        prefix = "filter:tasks:data."
        assert item["filter"].startswith(prefix) and query["filters"]["conjunction"] == "and"
        value = row["data"].get(item["filter"][len(prefix) :])
        if value is None or not OPERATORS[item["type"], item["operator"]](value, item["value"]):
            return False
    return True


class FakeSdkProjects:
    def __init__(self, sdk: FakeSdk) -> None:
        self.sdk = sdk
        self.fail_imports: list[Exception] = []  # raised by the next import_predictions calls

    def get(self, id, request_options=None):
        return SimpleNamespace(id=id, label_config=default_label_config())

    def import_predictions(self, id, request, request_options=None):
        if self.fail_imports:
            raise self.fail_imports.pop(0)
        assert id == self.sdk.project_id
        self.sdk.stored.extend(request)
        return SimpleNamespace(created=len(request))


class FakeSdk:
    """Tasks ``{id: data}`` of one project and the predictions stored into it."""

    def __init__(self, tasks: dict[int, dict], project_id: int = 3) -> None:
        self.project_id = project_id
        self.data = tasks
        self.stored: list[dict] = []
        self.tasks = FakeSdkTasks(self)
        self.projects = FakeSdkProjects(self)
        self.ml = SimpleNamespace(list=lambda project: [])
        self._client_wrapper = SimpleNamespace(get_base_url=lambda: "http://ls.test:8080")

    def row(self, task_id: int) -> dict:
        versions = [p["model_version"] for p in self.stored if p["task"] == task_id]
        joined = ",".join(versions)  # Label Studio on SQLite joins them with commas
        return {"id": task_id, "data": self.data[task_id], "predictions_model_versions": joined}

    def versions(self, task_id: int) -> list[str]:
        return [p["model_version"] for p in self.stored if p["task"] == task_id]


def ranked_tasks(count: int, unranked: int = 1) -> dict[int, dict]:
    """``count`` training tasks ranked 1..count (task id 10 + rank, listed in reverse), and
    ``unranked`` with rank 0 (outside influence's top)."""
    tasks = {
        10 + rank: {"image": f"/img/{rank}.png", "influence_rank": rank}
        for rank in range(count, 0, -1)
    }
    for k in range(unranked):
        tasks[100 + k] = {"image": f"/img/u{k}.png", "influence_rank": 0}
    return tasks


class FakePredictor:
    """``model_version`` and ``predict``; ``on_predict`` runs before each call's answer."""

    def __init__(self, version: str = "v1-aaaa") -> None:
        self.model_version = version
        self.calls: list[list[int]] = []
        self.on_predict = None
        self.errors: set[int] = set()  # task ids answered with an error

    def predict(self, tasks, label_config=None):
        assert label_config
        self.calls.append([t["id"] for t in tasks])
        version = self.model_version
        if self.on_predict is not None:
            self.on_predict(self)
        return [
            {"model_version": version, "score": None, "result": [], "error": "broken image"}
            if t["id"] in self.errors
            else {"model_version": version, "score": 0.9, "result": [{"task": t["id"]}]}
            for t in tasks
        ]
