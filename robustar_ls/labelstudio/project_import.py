"""``robustar-ls import``: turn an ImageFolder dataset into a ready Label Studio project.

Steps, ordered so that a rerun after any failure converges (each one finds what exists):

1. check the dataset (training images; val/ and test/ when present) and that it lies under the
   document root — nothing is created in Label Studio when these fail;
2. find or create the project, set the label config;
3. find or create the local-files storage, then fetch one image through Label Studio (a wrong
   document root shows here, before any task exists);
4. import one task per image (every split; ``data.split`` = train | val | test) not yet in the
   project, in bulk batches; existing tasks get new image/heatmap links and any field added
   since they were imported;
5. connect the ML backend (when given) and link its task-centre page (``GET /``) in the
   project description;
6. find or create the Data Manager tabs (:mod:`robustar_ls.labelstudio.client.views`).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustar_ls.config import ImportConfig, LabelStudioConfig
from robustar_ls.data.folders import DatasetError, ImageFolderSplits
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.client import LabelStudioError
from robustar_ls.labelstudio.client.sdk import LabelStudio
from robustar_ls.labelstudio.config import LabelConfigError, default_label_config, find_tags
from robustar_ls.labelstudio.influence_fields import CLEARED

log = logging.getLogger(__name__)

Saliency = Callable[[str], str]
LINK_FIELDS = ("image", "saliency")
SPLITS = ("train", "val", "test")


def task_data(
    relpath: str, true_class: str, image_url: str, saliency_url: str = "", split: str = "train"
) -> dict:
    """The data of one task (one image); the fields the label config and the views show.

    Model-dependent fields start empty (:data:`influence_fields.CLEARED`); numbers are JSON
    numbers so that the views sort them numerically.
    """
    what = "training image" if split == "train" else f"{split} image"
    return {
        "image": image_url,
        "relpath": relpath,
        "split": split,
        "true_class": true_class,
        "summary": f"True class: {true_class} ({what} {relpath})",
        "saliency": saliency_url,
        **CLEARED,
    }


def build_tasks(
    data: ImageFolderSplits, document_root: str | Path, saliency: Saliency | None = None
) -> list[dict]:
    """One task per image of every split (train first), served from Label Studio's local files.

    ``saliency`` maps an image URL to the URL of its saliency heatmap (the backend's); without
    it the field is left empty.
    """
    if not data.splits.get("train"):
        raise DatasetError(f"{data.root} has no training images (train/<class>/<image>)")
    tasks = []
    for split in SPLITS:
        samples = data.splits.get(split) or []
        if not samples:
            continue
        split_url = ls.local_files_url(data.split_dir(split), document_root)
        for sample in samples:
            url = split_url + "/" + urllib.parse.quote(sample.relpath, safe="/")
            heatmap = saliency(url) if saliency is not None else ""
            tasks.append(task_data(sample.relpath, data.classes[sample.label], url, heatmap, split))
    return tasks


def read_label_config(path: str = "") -> str:
    """The labeling config XML: the file at ``path`` (checked), or the packaged default."""
    if not path:
        return default_label_config()
    try:
        xml = Path(path).read_text()
    except OSError as err:
        raise LabelStudioError(f"cannot read label config {path}: {err.strerror}") from err
    try:
        find_tags(xml)
    except LabelConfigError as err:
        raise LabelStudioError(f"label config {path}: {err}") from err
    return xml


def _check_import_settings(ls_cfg: LabelStudioConfig, cfg: ImportConfig) -> None:
    if not cfg.data:
        raise LabelStudioError("no dataset given (--data)")
    if not ls_cfg.document_root:
        raise LabelStudioError(
            "no --document-root: images are served through Label Studio's local files; start "
            "Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<a folder containing the dataset>, and pass "
            "that folder as --document-root (uploading images is not supported)"
        )


def import_project(
    client: LabelStudio,
    ls_cfg: LabelStudioConfig,
    cfg: ImportConfig,
    basic_auth: tuple[str, str] | None = None,
    saliency: Saliency | None = None,
    progress: Callable | None = None,
) -> dict[str, Any]:
    """Create or update the project for ``cfg.data``; returns a JSON-able summary."""
    _check_import_settings(ls_cfg, cfg)
    data = ImageFolderSplits.open(cfg.data, required=("train",))
    tasks = build_tasks(data, ls_cfg.document_root, saliency)  # checks the document root too
    label_config = read_label_config(cfg.label_config)

    project = ls.ensure_project(client, ls_cfg.project, label_config)
    storage = ls.ensure_local_storage(
        client,
        project.id,
        data.root,
        ls_cfg.document_root,
        probe=data.splits["train"][0].path,
    )
    existing = ls.tasks_by_split(client, project.id)
    result = ls.import_tasks(
        client, project.id, tasks, cfg.batch_size, progress=progress, existing=existing
    )
    refreshed = refresh_links(client, project.id, tasks, existing, progress)
    log.info(
        "project %s: %d tasks created, %d already there",
        project.id,
        result.created,
        result.existing,
    )
    backend_id, page = None, None
    if cfg.backend_url:
        backend_id = ls.ensure_ml_backend(client, project.id, cfg.backend_url, basic_auth).id
        page = (cfg.saliency_base_url or cfg.backend_url).rstrip("/") + "/"
        ls.ensure_page_link(client, project, page)
    views = ls.ensure_views(client, project.id)
    view = views[ls.INFLUENCE_VIEW_TITLE]
    return {
        "project_id": project.id,
        "project_url": f"{ls_cfg.url.rstrip('/')}/projects/{project.id}/data?tab={view.id}",
        "storage_id": storage.id,
        "created_tasks": result.created,
        "existing_tasks": result.existing,
        "refreshed_links": refreshed,
        "view_id": view.id,
        "views": {title: v.id for title, v in views.items()},
        "splits": {split: len(data.splits.get(split) or []) for split in SPLITS},
        "ml_backend_id": backend_id,
        "backend_page": page,
    }


def refresh_links(
    client: LabelStudio,
    project_id: int,
    tasks: list[dict[str, Any]],
    existing: dict[str, dict[str, Any]],
    progress: Callable | None = None,
) -> int:
    """Point existing tasks at the current image and heatmap URLs (e.g. the backend moved), and
    give them the fields added since they were imported (e.g. ``split``).

    ``existing``: :func:`~robustar_ls.labelstudio.client.tasks_by_split`. Only link fields and
    missing fields are written; influence fields and annotations stay.
    """
    updates: dict[int, dict[str, Any]] = {}
    for task in tasks:
        old = existing.get(task["split"], {}).get(task["relpath"])
        if old is None:
            continue
        changed = {k: task[k] for k in LINK_FIELDS if old.data.get(k) != task[k]}
        changed.update({k: v for k, v in task.items() if k not in old.data})
        if changed:
            updates[old.id] = changed
    if not updates:
        return 0
    current = {t.id: t.data for split in existing.values() for t in split.values()}
    ls.update_task_data(client, project_id, updates, progress=progress, current=current)
    log.info("project %s: updated image/heatmap links of %d tasks", project_id, len(updates))
    return len(updates)


def summary_line(summary: dict[str, Any]) -> str:
    """One human line for the CLI."""
    backend = (
        f", ML backend {summary['ml_backend_id']}" if summary["ml_backend_id"] is not None else ""
    )
    return (
        f"project {summary['project_id']}: {summary['created_tasks']} tasks created, "
        f"{summary['existing_tasks']} already there (images: {_splits(summary)}){backend}; "
        f"open {summary['project_url']}"
    )


def _splits(summary: dict[str, Any]) -> str:
    counts = summary.get("splits") or {}
    return ", ".join(f"{n} {split}" for split, n in counts.items() if n) or "no images"
