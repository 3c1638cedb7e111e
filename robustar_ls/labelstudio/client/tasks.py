"""Tasks of a Label Studio project: listed by image, imported in bulk, their data updated."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from robustar_ls.labelstudio.client.sdk import (
    NO_SDK_RETRIES,
    LabelStudio,
    LabelStudioError,
    RetryPolicy,
    base_url,
    errors,
    every_item,
    with_retries,
)

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_tasks` did."""

    created: int
    existing: int
    task_ids: list[int]


@dataclass(frozen=True)
class UpdateResult:
    """What :func:`update_task_data` did."""

    updated: int
    unchanged: int


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def split_of(data: Mapping[str, Any]) -> str:
    """The dataset split a task shows (``data["split"]``; tasks imported before splits: train)."""
    split = data.get("split")
    return split if isinstance(split, str) and split else "train"


def tasks_by_split(
    client: LabelStudio, project_id: int, page_size: int = 1000
) -> dict[str, dict[str, Any]]:
    """Every task of the project, ``{split: {relpath: task}}`` (paged; only id and data).

    Tasks without a ``relpath`` are skipped; if several tasks of one split share one, the lowest
    id wins.
    """
    found: dict[str, dict[str, Any]] = {}
    with errors(client, f"list the tasks of project {project_id}"):
        for task in _every_page(client, project_id, page_size):
            relpath = (task.data or {}).get("relpath")
            if not relpath:
                continue
            split = found.setdefault(split_of(task.data), {})
            if relpath in split:
                log.warning(
                    "tasks %s and %s both hold image %s", split[relpath].id, task.id, relpath
                )
                if task.id > split[relpath].id:
                    continue
            split[relpath] = task
    return found


def _every_page(client: LabelStudio, project_id: int, page_size: int) -> Iterator[Any]:
    """Every task of the project (id and data), up to the last page (:func:`every_item`)."""
    return every_item(
        lambda number: client.tasks.list(
            project=project_id,
            fields="task_only",
            include="id,data",
            page=number,
            page_size=page_size,
        ),
        page_size,
    )


def tasks_by_image(
    client: LabelStudio, project_id: int, page_size: int = 1000, split: str = "train"
) -> dict[str, Any]:
    """The tasks of one split (default: training images) keyed by ``data["relpath"]``."""
    return tasks_by_split(client, project_id, page_size).get(split, {})


def import_tasks(
    client: LabelStudio,
    project_id: int,
    tasks: Sequence[Mapping[str, Any]],
    batch_size: int = 1000,
    progress: Progress | None = None,
    existing: Mapping[str, Mapping[str, Any]] | None = None,
) -> ImportResult:
    """Import task data dicts in bulk batches, skipping images that have a task.

    An image is its ``(split, relpath)``. One ``POST /api/projects/{id}/import`` per
    ``batch_size`` tasks. ``existing`` (from :func:`tasks_by_split`) saves listing the project.
    """
    if existing is None:
        existing = tasks_by_split(client, project_id)
    todo: list[Mapping[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for task in tasks:
        relpath = task.get("relpath")
        if not relpath:
            raise ValueError(f"task data without a 'relpath': {dict(task)}")
        key = (split_of(task), relpath)
        if relpath in existing.get(key[0], {}) or key in seen:
            continue
        seen.add(key)
        todo.append(task)
    batches = _batches(todo, batch_size)
    if progress is not None and batches:
        batches = progress(batches, desc="import", unit="batch")
    ids: list[int] = []
    for batch in batches:
        with errors(client, f"import {len(batch)} tasks into project {project_id}"):
            response = client.projects.import_tasks(
                project_id,
                request=[dict(t) for t in batch],
                return_task_ids=True,
                # not idempotent: never resent by the SDK; a rerun skips what landed
                request_options={"max_retries": 0, "timeout_in_seconds": 600},
            )
        ids.extend(response.task_ids or [])
    return ImportResult(created=len(todo), existing=len(tasks) - len(todo), task_ids=ids)


def update_task_data(
    client: LabelStudio,
    project_id: int,
    updates: Mapping[int, Mapping[str, Any]],
    progress: Progress | None = None,
    current: Mapping[int, Mapping[str, Any]] | None = None,
    workers: int = 8,
) -> UpdateResult:
    """Set fields of task data: ``updates = {task_id: {field: value}}``; other fields are kept.

    Label Studio 1.23 has no bulk task-data update (re-import creates new tasks, and deleting
    tasks would lose annotations), and ``PATCH /api/tasks/{id}`` replaces ``data`` as a whole;
    so each changed task is PATCHed with its merged data, ``workers`` at a time, and tasks whose
    data would not change are not sent at all. ``current`` = ``{task_id: data}`` (e.g. from
    :func:`tasks_by_image`) saves listing the project.
    """
    if current is None:
        by_split = tasks_by_split(client, project_id)
        current = {t.id: t.data for tasks in by_split.values() for t in tasks.values()}
    missing = [task_id for task_id in updates if task_id not in current]
    if missing:
        raise LabelStudioError(
            f"{len(missing)} tasks to update are not in project {project_id} "
            f"(e.g. {missing[:5]}); rerun `robustar-ls import` first"
        )
    changed: dict[int, dict[str, Any]] = {}
    for task_id, fields in updates.items():
        merged = {**current[task_id], **fields}
        if merged != dict(current[task_id]):
            changed[task_id] = merged

    def patch(task_id: int) -> int:
        with errors(client, f"update task {task_id}"):
            client.tasks.update(str(task_id), data=changed[task_id], project=project_id)
        return task_id

    if changed:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(patch, task_id) for task_id in changed]
            done: Iterable = as_completed(futures)
            if progress is not None:
                done = progress(done, total=len(futures), desc="update tasks", unit="task")
            for future in done:
                future.result()
    return UpdateResult(updated=len(changed), unchanged=len(updates) - len(changed))


# -- reads for the sync (retried) ------------------------------------------------------------


# Data Manager filters (Label Studio 1.23): tasks with at least one annotation, finished or
# cancelled (``total_annotations`` counts the finished ones, ``cancelled_annotations`` the rest)
ANNOTATED_FILTER: dict[str, Any] = {
    "conjunction": "or",
    "items": [
        {"filter": f"filter:tasks:{column}", "operator": "greater", "type": "Number", "value": 0}
        for column in ("total_annotations", "cancelled_annotations")
    ],
}
# what a sync does not read of a task: above all predictions and drafts (brush RLE, large)
SYNC_OMIT = (
    "predictions,drafts,annotations_results,predictions_results,annotators,comment_authors,"
    "updated_by"
)
IDS_PER_QUERY = 200  # task ids per by-id query (they travel in the URL)


def annotated_query() -> dict[str, Any]:
    """The ``query`` of :func:`fetch_tasks` that lists only tasks with annotations."""
    return {"filters": ANNOTATED_FILTER}


def ids_query(task_ids: Sequence[int]) -> dict[str, Any]:
    """The ``query`` of :func:`fetch_tasks` that lists exactly these tasks (annotated or not)."""
    return {"selectedItems": {"all": False, "included": [int(i) for i in task_ids]}}


def fetch_tasks(
    client: LabelStudio,
    project_id: int,
    page_size: int,
    policy: RetryPolicy,
    progress: Progress | None = None,
    query: Mapping[str, Any] | None = None,
    omit: str | None = None,
) -> list[dict[str, Any]]:
    """Tasks of the project with their annotations, page by page, each page retried.

    ``GET /api/tasks/?project=ID&fields=all&page=N`` (Label Studio orders it by task id); a task
    that moved onto the next page while paging is kept once. ``query``: a Data Manager query
    (:func:`annotated_query`, :func:`ids_query`; default every task); ``omit``: task fields
    not to send (e.g. :data:`SYNC_OMIT`; ``include`` would cut the annotations to their ids).
    """
    url = base_url(client)
    extra: dict[str, Any] = {}
    options: dict[str, Any] = dict(NO_SDK_RETRIES)
    if query is not None:
        extra["query"] = json.dumps(query, separators=(",", ":"))
    if omit is not None:  # not a parameter of the SDK's tasks.list: sent as an extra one
        options["additional_query_parameters"] = {"omit": omit}

    def page(number: int) -> tuple[list[dict[str, Any]], int]:
        pager = with_retries(
            lambda: client.tasks.list(
                project=project_id,
                fields="all",
                page=number,
                page_size=page_size,
                request_options=options,
                **extra,
            ),
            f"page {number} of the tasks of project {project_id}",
            url,
            policy,
        )
        items = [as_dict(task) for task in (pager.items or [])]
        total = getattr(pager.response, "total", None)
        return items, int(total) if total is not None else len(items)

    tasks, total = page(1)
    pages = max(1, math.ceil(total / page_size))
    numbers: Iterable[int] = range(2, pages + 1)
    if progress is not None and pages > 1:
        numbers = progress(numbers, desc="Label Studio pages", unit="page", total=pages - 1)
    for number in numbers:
        items, _ = page(number)
        if not items:
            break
        tasks.extend(items)
    by_id = {int(task["id"]): task for task in tasks}
    return [by_id[k] for k in sorted(by_id)]


def fetch_annotated_tasks(
    client: LabelStudio,
    project_id: int,
    page_size: int,
    policy: RetryPolicy,
    progress: Progress | None = None,
    recheck: Iterable[int] = (),
) -> list[dict[str, Any]]:
    """The tasks that have annotations (finished or cancelled), plus the tasks ``recheck``
    names that were not among them, read by id (annotated or not); without :data:`SYNC_OMIT`.

    What a sync needs, in time that grows with the annotated tasks, not with the project:
    ``recheck`` (the task ids of the masks synced before) makes sure a task whose annotations
    were deleted since, or that moved between pages while listing, is seen as it is now.
    """
    tasks = fetch_tasks(
        client, project_id, page_size, policy, progress, annotated_query(), SYNC_OMIT
    )
    seen = {int(task["id"]) for task in tasks}
    missing = sorted({int(i) for i in recheck} - seen)
    for chunk in _batches(missing, IDS_PER_QUERY):
        found = fetch_tasks(
            client, project_id, page_size, policy, None, ids_query(chunk), SYNC_OMIT
        )
        tasks.extend(task for task in found if int(task["id"]) not in seen)
        seen.update(int(task["id"]) for task in found)
    return sorted(tasks, key=lambda task: int(task["id"]))


def project_task_count(client: LabelStudio, project_id: int, policy: RetryPolicy) -> int | None:
    """How many tasks the project holds (``task_number``), None when Label Studio does not say."""
    project = _project(client, project_id, policy)
    count = getattr(project, "task_number", None)
    if count is None and isinstance(project, Mapping):
        count = project.get("task_number")
    return int(count) if isinstance(count, int) else None


def _project(client: LabelStudio, project_id: int, policy: RetryPolicy) -> Any:
    return with_retries(
        lambda: client.projects.get(id=project_id, request_options=NO_SDK_RETRIES),
        f"project {project_id}",
        base_url(client),
        policy,
    )


def project_label_config(client: LabelStudio, project_id: int, policy: RetryPolicy) -> str:
    """The project's labeling config (retried); an error when it has none."""
    project = _project(client, project_id, policy)
    config = getattr(project, "label_config", None)
    if config is None and isinstance(project, Mapping):
        config = project.get("label_config")
    if not config:
        raise LabelStudioError(
            f"project {project_id} has no label config; import the project first"
        )
    return str(config)


def as_dict(obj: Any) -> dict[str, Any]:
    """An SDK model (pydantic) or dict as a plain dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None) or getattr(obj, "dict", None)
    if dump is None:
        raise TypeError(f"cannot read {type(obj).__name__} as a mapping")
    return dump()
