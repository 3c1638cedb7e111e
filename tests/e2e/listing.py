"""Listing tasks through the SDK the way the package does: up to the last page, never past it
(the SDK's own pager asks for one page more, which Label Studio logs as an error)."""

from __future__ import annotations

from typing import Any

from robustar_ls.labelstudio.client.sdk import every_item

PAGE_SIZE = 1000


def listed_tasks(client: Any, **kwargs: Any) -> list[Any]:
    """``client.tasks.list(**kwargs)``, every page."""
    pages = lambda number: client.tasks.list(**kwargs, page=number, page_size=PAGE_SIZE)  # noqa: E731
    return list(every_item(pages, PAGE_SIZE))


def listed_projects(client: Any, **kwargs: Any) -> list[Any]:
    """``client.projects.list(**kwargs)``, every page."""
    pages = lambda number: client.projects.list(**kwargs, page=number, page_size=PAGE_SIZE)  # noqa: E731
    return list(every_item(pages, PAGE_SIZE))
