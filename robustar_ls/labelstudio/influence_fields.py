"""Write an influence run into Label Studio task data.

Training tasks get ``influence``, ``influence_rank``, ``influence_explains`` and
``related_html`` (thumbnails linking to the test errors they drive), so the "Most influential
first" tab orders them. Test tasks get the model's ``predicted`` class, ``confidence`` and
``outcome`` (correct | wrong); a misclassified one also gets ``top_training_tasks`` (the ids of
its 5 most influential training tasks, most influential first) and ``related_html`` (their
thumbnails, each opening that training task). Every task written carries ``influence_version``:
the classifier version whose errors produced its fields.

:func:`influence_updates` and :func:`prediction_updates` are pure (result + current tasks → field
updates); every task not written now is reset to the values `robustar-ls import` sets
(:data:`CLEARED`), so nothing of an earlier model version survives a rerun. A field that does not
apply holds no value (JSON null: an empty cell in the Data Manager, never a made-up 0): the
test-only fields on training tasks, the training-only ones on test tasks.
:func:`write_influence` sends the updates through :mod:`robustar_ls.labelstudio.client` (one
PATCH per changed task; unchanged tasks are not sent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from robustar_ls.labelstudio.related import TaskLinks, Thumb, thumbnails_html

if TYPE_CHECKING:  # not at run time: `robustar-ls import` needs CLEARED, not torch
    from robustar_ls.explain.influence import InfluenceResult

log = logging.getLogger(__name__)

# what `robustar-ls import` gives a task before any scoring; "unscored" again after a rerun.
# No value (null) where there is none: the Data Manager shows an empty cell, not a made-up 0.
CLEARED: dict[str, Any] = {
    "influence": None,
    "influence_rank": None,
    "influence_explains": "",  # text the labeling view's Headers show: empty, never "null"
    "influence_line": "",  # the labeling view's one-line summary (Headers show text only)
    "influence_version": None,  # the classifier version that produced the fields
    "predicted": None,
    "confidence": None,
    "outcome": None,
    "top_training_tasks": None,
    "related_html": "",  # a HyperText object tag reads it: always a string
}
FIELDS = ("influence", "influence_rank", "influence_explains", "influence_version")
TRAIN_FIELDS = (*FIELDS, "influence_line", "related_html")
TEST_FIELDS = (
    "predicted",
    "confidence",
    "outcome",
    "influence_line",
    "influence_version",
    "top_training_tasks",
    "related_html",
)
# the fields of the other split: no value on this one
NOT_ON_TRAIN = {name: None for name in ("predicted", "confidence", "outcome", "top_training_tasks")}
NOT_ON_TEST = {
    name: CLEARED[name] for name in ("influence", "influence_rank", "influence_explains")
}


@dataclass
class InfluenceWrite:
    """What :func:`write_influence` did (or, from the update builders, will do)."""

    scored: int = 0  # training tasks given a score now
    cleared: int = 0  # tasks whose old values were removed
    predicted: int = 0  # test tasks given the model's prediction
    test_errors: int = 0  # of them misclassified, with their top training tasks
    updated: int = 0  # tasks actually changed in Label Studio
    unchanged: int = 0
    missing: list[str] = field(default_factory=list)  # images without a task
    error_tasks: list[int] = field(default_factory=list)  # misclassified test tasks, surest first

    def as_dict(self) -> dict[str, Any]:
        return {
            "scored": self.scored,
            "cleared": self.cleared,
            "predicted": self.predicted,
            "test_errors": self.test_errors,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "missing": len(self.missing),
        }


def task_id_and_data(task: Any) -> tuple[int, dict[str, Any]]:
    """``(id, data)`` of an SDK task object or a plain dict."""
    if isinstance(task, Mapping):
        return int(task["id"]), dict(task.get("data") or {})
    return int(task.id), dict(task.data or {})


def _clear(
    tasks: Mapping[str, Any], names: tuple[str, ...], updates: dict, report, other: dict
) -> None:
    """Reset ``names`` of every task in ``tasks`` without an update yet, and give every task no
    value in the ``other`` split's fields."""
    cleared = {name: CLEARED[name] for name in names}
    for task in tasks.values():
        task_id, data = task_id_and_data(task)
        if task_id in updates:
            updates[task_id] = {**other, **updates[task_id]}
            continue
        updates[task_id] = {**other, **cleared}  # unchanged tasks are not sent
        if any(_has_value(data.get(name)) for name in names):
            report.cleared += 1


def _has_value(value: Any) -> bool:
    """Whether a field holds more than an empty placeholder (older imports wrote 0, [])."""
    return value not in (None, "", 0, [])


def _thumb(task: Any, href: str, caption: str) -> Thumb:
    _, data = task_id_and_data(task)
    return Thumb(href, str(data.get("image", "")), caption)


def _driven_errors_html(
    result: InfluenceResult, relpath: str, test_tasks: Mapping[str, Any], links: TaskLinks
) -> str:
    thumbs = [
        _thumb(test_tasks[e["test"]], links.test(task_id_and_data(test_tasks[e["test"]])[0]),
               f"{e['true']} → {e['predicted']}")
        for e in result.explains.get(relpath) or []
        if e["test"] in test_tasks
    ]  # fmt: skip
    return thumbnails_html("Test errors it drives most (open one):", thumbs)


def influence_updates(
    result: InfluenceResult,
    tasks: Mapping[str, Any],
    top: int | None = None,
    links: TaskLinks | None = None,
    test_tasks: Mapping[str, Any] | None = None,
) -> tuple[dict[int, dict[str, Any]], InfluenceWrite]:
    """``{task_id: fields}`` of training tasks for the ``top`` highest images (all when None)
    plus clears of the others. With ``links`` and ``test_tasks`` (by relpath), each scored task
    links to the test errors it drives."""
    report = InfluenceWrite()
    updates: dict[int, dict[str, Any]] = {}
    for relpath in result.ranked(top):
        task = tasks.get(relpath)
        if task is None:
            report.missing.append(relpath)
            continue
        task_id, _ = task_id_and_data(task)
        updates[task_id] = {
            "influence": round(result.scores[relpath], 6),
            "influence_rank": result.ranks[relpath],
            "influence_explains": result.explain_text(relpath),
            "influence_version": result.model_version,
        }
        if links is not None:
            updates[task_id]["influence_line"] = (
                f"Influence {result.scores[relpath]:.4g} · rank {result.ranks[relpath]} "
                f"of {len(result.ranks)} training images"
            )
            updates[task_id]["related_html"] = _driven_errors_html(
                result, relpath, test_tasks or {}, links
            )
    report.scored = len(updates)
    _clear(tasks, TRAIN_FIELDS if links is not None else FIELDS, updates, report, NOT_ON_TRAIN)
    if report.missing:
        log.warning(
            "%d scored images have no task in the project (e.g. %s); run `robustar-ls import`",
            len(report.missing),
            report.missing[:3],
        )
    return updates, report


def _error_fields(
    error: Mapping[str, Any], train_tasks: Mapping[str, Any], links: TaskLinks, result
) -> dict[str, Any]:
    """``top_training_tasks`` and ``related_html`` of one misclassified test image."""
    chosen = [rel for rel in error.get("top_train") or [] if rel in train_tasks]
    ids = [task_id_and_data(train_tasks[rel])[0] for rel in chosen]
    thumbs = [
        _thumb(train_tasks[rel], links.train(task_id), f"#{result.ranks.get(rel, '?')} {rel}")
        for rel, task_id in zip(chosen, ids, strict=True)
    ]
    heading = f"Training images that drive this error ({error['true']} → {error['predicted']}):"
    return {"top_training_tasks": ids, "related_html": thumbnails_html(heading, thumbs)}


def prediction_updates(
    result: InfluenceResult,
    test_tasks: Mapping[str, Any],
    train_tasks: Mapping[str, Any],
    links: TaskLinks,
    report: InfluenceWrite | None = None,
) -> tuple[dict[int, dict[str, Any]], InfluenceWrite]:
    """``{task_id: fields}`` of test tasks: the prediction of each, the top training tasks of
    each error; test tasks without a prediction in ``result`` are reset."""
    report = report if report is not None else InfluenceWrite()
    errors = {e["test"]: e for e in result.test_errors}
    updates: dict[int, dict[str, Any]] = {}
    for relpath, pred in result.predictions.items():
        task = test_tasks.get(relpath)
        if task is None:
            report.missing.append(f"test/{relpath}")
            continue
        task_id, _ = task_id_and_data(task)
        wrong = relpath in errors
        fields = {
            "predicted": pred["predicted"],
            "confidence": pred["confidence"],
            "outcome": "wrong" if wrong else "correct",
            "influence_line": f"Predicted {pred['predicted']} ({pred['confidence']:.0%}): "
            + ("WRONG" if wrong else "correct"),
            "influence_version": result.model_version,
            "top_training_tasks": None,
            "related_html": "",
        }
        if wrong:
            fields.update(_error_fields(errors[relpath], train_tasks, links, result))
        updates[task_id] = fields
        report.predicted += 1
        report.test_errors += int(wrong)
        if wrong:
            report.error_tasks.append(task_id)
    report.error_tasks.sort(key=lambda i: -float(updates[i]["confidence"]))
    _clear(test_tasks, TEST_FIELDS, updates, report, NOT_ON_TEST)
    return updates, report


def write_influence(
    client: Any,
    project_id: int,
    result: InfluenceResult,
    top: int | None = None,
    progress: Callable[..., Iterable] | None = None,
    test_split: str = "test",
) -> InfluenceWrite:
    """Update the project's training and ``test_split`` tasks with ``result`` (and make sure
    its Data Manager tabs exist); unchanged tasks are not sent."""
    from robustar_ls.labelstudio import client as ls

    by_split = ls.tasks_by_split(client, project_id)
    views = ls.ensure_views(client, project_id)
    links = TaskLinks(
        project_id, views[ls.INFLUENCE_VIEW_TITLE].id, views[ls.TEST_ERRORS_VIEW_TITLE].id
    )
    train, test = by_split.get("train", {}), by_split.get(test_split, {})
    updates, report = influence_updates(result, train, top, links, test)
    test_fields, report = prediction_updates(result, test, train, links, report)
    updates.update(test_fields)
    current = dict(task_id_and_data(t) for tasks in by_split.values() for t in tasks.values())
    done = ls.update_task_data(client, project_id, updates, progress=progress, current=current)
    report.updated, report.unchanged = done.updated, done.unchanged
    return report
