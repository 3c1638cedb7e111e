"""Predictions stored in Label Studio: which tasks hold which model versions, the most
influential tasks, and predictions written in bulk (the backend's prefetch).

Verified on Label Studio 1.23.2: ``GET /api/tasks/`` with ``fields=all`` and
``include=id,data,predictions_model_versions`` answers each task's prediction versions (a
comma-joined string on SQLite, a list on PostgreSQL); a Data Manager ``query`` selects tasks by
``data.influence_rank`` (a Number filter, so it compares numerically on both databases) or by
id (``selectedItems``); ``POST /api/projects/{id}/import/predictions`` stores many predictions
in one request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from robustar_ls.labelstudio.client.sdk import (
    NO_SDK_RETRIES,
    LabelStudio,
    RetryPolicy,
    base_url,
    with_retries,
)


@dataclass(frozen=True)
class StoredTask:
    """A task with the model versions of the predictions Label Studio holds for it."""

    id: int
    data: dict[str, Any]
    versions: frozenset[str] = field(default_factory=frozenset)


def versions_of(value: Any) -> frozenset[str]:
    """``predictions_model_versions`` as a set: "v1,v2" (SQLite), ["v1", "v2"] (PostgreSQL)."""
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        items = ()
    return frozenset(str(v).strip() for v in items if v is not None and str(v).strip())


def _stored(task: Any) -> StoredTask:
    get = task.get if isinstance(task, Mapping) else lambda name: getattr(task, name, None)
    return StoredTask(
        id=int(get("id")),
        data=dict(get("data") or {}),
        versions=versions_of(get("predictions_model_versions")),
    )


def _query_tasks(
    client: LabelStudio, project_id: int, query: dict[str, Any], what: str, policy: RetryPolicy
) -> list[StoredTask]:
    """The tasks a Data Manager query selects (one page of up to 1000 per call, all pages)."""
    found: list[StoredTask] = []
    page, size = 1, 1000
    while True:
        pager = with_retries(
            lambda number=page: client.tasks.list(
                project=project_id,
                query=json.dumps(query),
                fields="all",
                include="id,data,predictions_model_versions",
                page=number,
                page_size=size,
                request_options=NO_SDK_RETRIES,
            ),
            what,
            base_url(client),
            policy,
        )
        items = list(pager.items or [])
        found.extend(_stored(task) for task in items)
        total = getattr(getattr(pager, "response", None), "total", None)
        if len(items) < size or (total is not None and len(found) >= int(total)):
            return found
        page += 1


def most_influential_tasks(
    client: LabelStudio, project_id: int, top: int, policy: RetryPolicy | None = None
) -> list[StoredTask]:
    """The tasks ranked 1..``top`` by ``robustar-ls influence`` (``data.influence_rank``),
    most influential first."""
    if top < 1:
        return []
    rank = "filter:tasks:data.influence_rank"
    query = {
        "filters": {
            "conjunction": "and",
            "items": [
                {"filter": rank, "operator": "greater_or_equal", "type": "Number", "value": 1},
                {"filter": rank, "operator": "less_or_equal", "type": "Number", "value": top},
            ],
        }
    }
    tasks = _query_tasks(
        client, project_id, query, f"the top {top} tasks of project {project_id}",
        policy or RetryPolicy(),
    )  # fmt: skip
    return sorted(tasks, key=lambda t: (float(t.data.get("influence_rank") or 0), t.id))


def test_error_tasks(
    client: LabelStudio, project_id: int, top: int, policy: RetryPolicy | None = None
) -> list[StoredTask]:
    """Up to ``top`` misclassified test tasks (``data.outcome == "wrong"``, as ``robustar-ls
    influence`` writes it), the most confident errors first (the "Test errors" tab's order)."""
    if top < 1:
        return []
    query = {
        "filters": {
            "conjunction": "and",
            "items": [
                {"filter": "filter:tasks:data.outcome", "operator": "equal", "type": "String",
                 "value": "wrong"},
            ],
        }
    }  # fmt: skip
    tasks = _query_tasks(
        client, project_id, query, f"the test errors of project {project_id}",
        policy or RetryPolicy(),
    )  # fmt: skip
    tasks.sort(key=lambda t: (-float(t.data.get("confidence") or 0), t.id))
    return tasks[:top]


def tasks_with_versions(
    client: LabelStudio, project_id: int, ids: Sequence[int], policy: RetryPolicy | None = None
) -> dict[int, StoredTask]:
    """The tasks ``ids`` of the project with their prediction versions, by id."""
    if not ids:
        return {}
    query = {"selectedItems": {"all": False, "included": [int(i) for i in ids]}}
    what = f"{len(ids)} tasks of project {project_id}"
    tasks = _query_tasks(client, project_id, query, what, policy or RetryPolicy())
    return {task.id: task for task in tasks}


def store_predictions(
    client: LabelStudio,
    project_id: int,
    predictions: Sequence[Mapping[str, Any]],
    policy: RetryPolicy | None = None,
) -> int:
    """Store ``[{task, result, score, model_version}, ...]`` in one request; the count stored.

    Retried on transient errors like a read: a retry after a lost answer may store a task's
    prediction twice, which the caller's next version check shows (never a wrong prediction).
    """
    if not predictions:
        return 0
    answer = with_retries(
        lambda: client.projects.import_predictions(
            project_id, request=[dict(p) for p in predictions], request_options=NO_SDK_RETRIES
        ),
        f"storing {len(predictions)} predictions in project {project_id}",
        base_url(client),
        policy or RetryPolicy(),
    )
    created = getattr(answer, "created", None)
    return int(created) if created is not None else len(predictions)
