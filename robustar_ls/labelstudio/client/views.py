"""The project's Data Manager tabs: what each shows, in which order, and keeping them current.

Four tabs (:data:`VIEWS`), created by ``robustar-ls import`` and repaired by it and by
``robustar-ls influence``:

- "Most influential first": training images, highest ``data.influence`` first;
- "Test errors": misclassified test images, most confident errors first;
- "Annotated": every task with an annotation (any split);
- "All test images": every test image, in task order.

Each shows the image thumbnail, true and predicted class, confidence, correct/wrong, influence
and rank; Label Studio's other default columns (inner id, dates, prediction and annotation
details, ...) and the long text fields are hidden (the view's ``hiddenColumns``).

Label Studio 1.23 orders ``tasks:data.<field>`` as text (on PostgreSQL) unless the view's
``columnsDisplayType`` marks the column "Number", which makes it ``CAST(... AS float)``; on
SQLite JSON numbers compare numerically anyway but strings do not, so both the column type and
JSON numbers in the task data are used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from robustar_ls.labelstudio.client.sdk import LabelStudio, errors

log = logging.getLogger(__name__)

INFLUENCE_VIEW_TITLE = "Most influential first"
TEST_ERRORS_VIEW_TITLE = "Test errors"
ANNOTATED_VIEW_TITLE = "Annotated"
TEST_VIEW_TITLE = "All test images"

NUMBER_COLUMNS = ("influence", "influence_rank", "confidence")
# Label Studio's default columns that say nothing about robustness, and our long text fields
HIDDEN = [
    f"tasks:{name}"
    for name in (
        "inner_id",
        "completed_at",
        "cancelled_annotations",
        "total_predictions",
        "annotators",
        "annotations_results",
        "annotations_ids",
        "predictions_score",
        "predictions_model_versions",
        "predictions_results",
        "file_upload",
        "storage_filename",
        "created_at",
        "updated_at",
        "updated_by",
        "avg_lead_time",
        "draft_exists",
    )
] + [
    f"tasks:data.{name}"
    for name in (
        "relpath",
        "summary",
        "saliency",
        "influence_explains",
        "influence_line",
        "top_training_tasks",
        "related_html",
        "model_version",
    )
]


def _split_is(split: str) -> dict[str, Any]:
    return {
        "filter": "filter:tasks:data.split",
        "operator": "equal",
        "type": "String",
        "value": split,
    }


@dataclass(frozen=True)
class ViewSpec:
    """One Data Manager tab: its title, ordering and filters."""

    title: str
    ordering: tuple[str, ...]
    filters: tuple[dict[str, Any], ...] = ()

    def data(self) -> dict[str, Any]:
        """The view's ``data`` as ``POST /api/dm/views`` takes it."""
        return {
            "title": self.title,
            "type": "list",
            "target": "tasks",
            "ordering": list(self.ordering),
            "filters": {"conjunction": "and", "items": [dict(f) for f in self.filters]},
            "columnsDisplayType": {f"tasks:data.{name}": "Number" for name in NUMBER_COLUMNS},
            "hiddenColumns": {"explore": list(HIDDEN), "labeling": list(HIDDEN)},
        }


VIEWS = (
    ViewSpec(INFLUENCE_VIEW_TITLE, ("-tasks:data.influence",), (_split_is("train"),)),
    ViewSpec(
        TEST_ERRORS_VIEW_TITLE,
        ("-tasks:data.confidence",),
        (
            _split_is("test"),
            {
                "filter": "filter:tasks:data.outcome",
                "operator": "equal",
                "type": "String",
                "value": "wrong",
            },
        ),
    ),  # fmt: skip
    ViewSpec(
        ANNOTATED_VIEW_TITLE,
        ("-tasks:data.influence",),
        (
            {
                "filter": "filter:tasks:total_annotations",
                "operator": "greater",
                "type": "Number",
                "value": 0,
            },
        ),
    ),  # fmt: skip
    ViewSpec(TEST_VIEW_TITLE, ("tasks:id",), (_split_is("test"),)),
)


def influence_view_data(title: str = INFLUENCE_VIEW_TITLE) -> dict[str, Any]:
    """The data of the "Most influential first" tab (under ``title``)."""
    return {**VIEWS[0].data(), "title": title}


def _needs_update(data: dict[str, Any], wanted: dict[str, Any]) -> bool:
    types = data.get("columnsDisplayType") or {}
    return any(
        data.get(key) != wanted[key] for key in ("ordering", "filters", "hiddenColumns")
    ) or any(types.get(k) != v for k, v in wanted["columnsDisplayType"].items())


def ensure_view(client: LabelStudio, project_id: int, wanted: dict[str, Any], views: list) -> Any:
    """The view titled ``wanted["title"]`` among ``views``: created, or repaired when its
    ordering, filters or columns differ (columns the user added stay shown)."""
    title = wanted["title"]
    view = next((v for v in views if (v.data or {}).get("title") == title), None)
    if view is None:
        with errors(client, f"create the Data Manager view {title!r}"):
            view = client.views.create(project=project_id, data=wanted)
        log.info("created Data Manager view %r (id %s)", title, view.id)
        return view
    data = dict(view.data or {})
    if _needs_update(data, wanted):
        data.update({k: wanted[k] for k in ("ordering", "filters", "hiddenColumns")})
        data["columnsDisplayType"] = {
            **(data.get("columnsDisplayType") or {}),
            **wanted["columnsDisplayType"],
        }
        with errors(client, f"update the Data Manager view {title!r}"):
            view = client.views.update(str(view.id), project=project_id, data=data)
    return view


def ensure_views(client: LabelStudio, project_id: int) -> dict[str, Any]:
    """The four tabs of :data:`VIEWS`, ``{title: view}`` (created or repaired)."""
    with errors(client, f"list the Data Manager views of project {project_id}"):
        views = list(client.views.list(project=project_id))
    return {spec.title: ensure_view(client, project_id, spec.data(), views) for spec in VIEWS}


def ensure_influence_view(
    client: LabelStudio, project_id: int, title: str = INFLUENCE_VIEW_TITLE
) -> Any:
    """The project's "Most influential first" Data Manager view (created or repaired)."""
    with errors(client, f"list the Data Manager views of project {project_id}"):
        views = list(client.views.list(project=project_id))
    return ensure_view(client, project_id, influence_view_data(title), views)
