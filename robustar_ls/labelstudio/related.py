"""Links between tasks, as the labeling view shows them: thumbnails that open another task.

A Data Manager URL with ``?task=ID`` opens that task in Label Studio 1.23's labeling view
(``/projects/{project}/data?tab={view}&task={task}``), so a thumbnail is an ``<a>`` around the
task's own image, rendered by the label config's ``<HyperText inline="true">``. Relative URLs:
the page and the images are served by the same Label Studio.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

THUMB_PX = 96


@dataclass(frozen=True)
class TaskLinks:
    """Where links point: the project and the tab each kind of task opens in."""

    project_id: int
    train_view: int | str  # "Most influential first"
    test_view: int | str  # "Test errors"

    def href(self, task_id: int, view: int | str) -> str:
        return f"/projects/{self.project_id}/data?tab={view}&task={task_id}"

    def train(self, task_id: int) -> str:
        return self.href(task_id, self.train_view)

    def test(self, task_id: int) -> str:
        return self.href(task_id, self.test_view)


@dataclass(frozen=True)
class Thumb:
    """One linked thumbnail: the task it opens, its image, a caption under it."""

    href: str
    image: str
    caption: str


def thumbnails_html(heading: str, thumbs: Sequence[Thumb]) -> str:
    """A heading and a row of linked thumbnails (escaped HTML; "" when there is none)."""
    if not thumbs:
        return ""
    figures = "".join(
        f'<a class="robustar-thumb" href="{html.escape(t.href)}" target="_top" '
        f'title="{html.escape(t.caption)}" style="display:inline-block;margin:0 6px 0 0;'
        f'width:{THUMB_PX}px;text-align:center;font-size:11px;text-decoration:none">'
        f'<img src="{html.escape(t.image)}" alt="{html.escape(t.caption)}" '
        f'style="width:{THUMB_PX}px;height:{THUMB_PX}px;object-fit:cover;display:block"/>'
        f'<span style="display:block;overflow:hidden;white-space:nowrap;'
        f'text-overflow:ellipsis">{html.escape(t.caption)}</span></a>'
        for t in thumbs
    )
    return (
        f'<div class="robustar-related"><div style="font-weight:600;margin:2px 0">'
        f"{html.escape(heading)}</div><div>{figures}</div></div>"
    )
