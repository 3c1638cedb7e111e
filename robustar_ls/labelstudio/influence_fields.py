"""Write influence scores into Label Studio task data (``influence``, ``influence_rank``,
``influence_explains``), so the "Most influential first" view orders tasks by them.

:func:`influence_updates` is pure (result + current task data → field updates); it also clears
the fields of every other task (back to the values `robustar-ls import` sets: 0, 0, "") so that,
with ``--top N``, scores of an earlier run do not survive a rerun after retraining.
:func:`write_influence` sends the updates through :mod:`robustar_ls.labelstudio.client`
(which skips tasks whose data would not change).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from robustar_ls.explain.influence import InfluenceResult

log = logging.getLogger(__name__)

FIELDS = ("influence", "influence_rank", "influence_explains")
# what `robustar-ls import` gives a task before any scoring; "unscored" again after a rerun
CLEARED: dict[str, Any] = {"influence": 0.0, "influence_rank": 0, "influence_explains": ""}


@dataclass
class InfluenceWrite:
    """What :func:`write_influence` did (or, from :func:`influence_updates`, will do)."""

    scored: int = 0  # tasks given a score now
    cleared: int = 0  # tasks whose old score was removed
    updated: int = 0  # tasks actually changed in Label Studio
    unchanged: int = 0
    missing: list[str] = field(default_factory=list)  # scored images without a task

    def as_dict(self) -> dict[str, Any]:
        return {
            "scored": self.scored,
            "cleared": self.cleared,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "missing": len(self.missing),
        }


def task_id_and_data(task: Any) -> tuple[int, dict[str, Any]]:
    """``(id, data)`` of an SDK task object or a plain dict."""
    if isinstance(task, Mapping):
        return int(task["id"]), dict(task.get("data") or {})
    return int(task.id), dict(task.data or {})


def influence_updates(
    result: InfluenceResult, tasks: Mapping[str, Any], top: int | None = None
) -> tuple[dict[int, dict[str, Any]], InfluenceWrite]:
    """``{task_id: fields}`` for the ``top`` highest images (all when None) + stale clears."""
    chosen = result.ranked(top)
    report = InfluenceWrite()
    updates: dict[int, dict[str, Any]] = {}
    for relpath in chosen:
        task = tasks.get(relpath)
        if task is None:
            report.missing.append(relpath)
            continue
        task_id, _ = task_id_and_data(task)
        updates[task_id] = {
            "influence": round(result.scores[relpath], 6),
            "influence_rank": result.ranks[relpath],
            "influence_explains": result.explain_text(relpath),
        }
    report.scored = len(updates)
    for task in tasks.values():
        task_id, data = task_id_and_data(task)
        if task_id in updates:
            continue
        updates[task_id] = dict(CLEARED)  # unchanged tasks are not sent
        if any(data.get(name, CLEARED[name]) != CLEARED[name] for name in FIELDS):
            report.cleared += 1
    if report.missing:
        log.warning(
            "%d scored images have no task in the project (e.g. %s); run `robustar-ls import`",
            len(report.missing),
            report.missing[:3],
        )
    return updates, report


def write_influence(
    client: Any,
    project_id: int,
    result: InfluenceResult,
    top: int | None = None,
    progress: Callable[..., Iterable] | None = None,
) -> InfluenceWrite:
    """Update the project's tasks with ``result`` (bulk; unchanged tasks are not sent)."""
    from robustar_ls.labelstudio.client import tasks_by_image, update_task_data

    tasks = tasks_by_image(client, project_id)
    updates, report = influence_updates(result, tasks, top)
    current = dict(task_id_and_data(task) for task in tasks.values())
    done = update_task_data(client, project_id, updates, progress=progress, current=current)
    report.updated, report.unchanged = done.updated, done.unchanged
    return report
