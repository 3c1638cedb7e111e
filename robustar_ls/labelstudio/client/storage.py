"""Label Studio's local-files storage: the URLs of dataset images and the storage serving them."""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

from robustar_ls.labelstudio.client.sdk import (
    KEY_REFUSED,
    LabelStudio,
    LabelStudioError,
    errors,
    http_get,
)

log = logging.getLogger(__name__)

STORAGE_TITLE = "robustar-ls dataset"
# The local storage only serves files; its "Sync" must never turn the images into extra tasks
# (tasks are imported by `robustar-ls import`, with their metadata), so its filter matches nothing.
STORAGE_NEVER_MATCH = "(?!)"
LOCAL_FILES_PREFIX = "/data/local-files/?d="


def relative_to_document_root(path: str | Path, document_root: str | Path) -> str:
    """``path`` relative to ``document_root`` ("/"-separated); an error if it is not inside."""
    if not str(document_root):
        raise LabelStudioError("no document root given")
    root = Path(document_root).resolve()
    target = Path(path).resolve()
    try:
        rel = target.relative_to(root)
    except ValueError:
        raise LabelStudioError(
            f"{path} is not inside the document root {document_root}: Label Studio only serves "
            "local files under its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; move the dataset "
            "there (or start Label Studio with a document root that contains it) and pass that "
            "same folder as --document-root"
        ) from None
    return rel.as_posix()


def local_files_url(path: str | Path, document_root: str | Path) -> str:
    """The task-data URL under which Label Studio serves the local file ``path``."""
    rel = relative_to_document_root(path, document_root)
    return LOCAL_FILES_PREFIX + urllib.parse.quote(rel, safe="/")


def _storage_path(path: str | Path, document_root: str | Path) -> str:
    """The storage path as Label Studio compares it: the document root as given + the rest."""
    rel = relative_to_document_root(path, document_root)
    if rel in ("", "."):
        raise LabelStudioError(
            f"{path} is the document root itself; Label Studio needs the dataset in a "
            f"sub-folder of {document_root}"
        )
    return os.path.normpath(os.path.join(os.path.abspath(document_root), rel))


def _covers(storage_path: str, path: str) -> bool:
    root = os.path.normpath(storage_path or "")
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def create_local_storage(
    client: LabelStudio,
    project_id: int,
    path: str | Path,
    *,
    title: str,
    description: str = "",
    regex_filter: str | None = None,
    use_blob_urls: bool = True,
) -> Any:
    """Create a local-files import storage of ``path`` (a folder on the Label Studio server).

    ``use_blob_urls``: a sync of the storage makes one task per file, holding its URL (True),
    or reads each file as a JSON task (False). robustar-ls imports its own tasks and never
    syncs this storage; it serves ``/data/local-files/?d=...`` either way.
    """
    optional = {"description": description, "regex_filter": regex_filter}
    with errors(client, f"create a local-files storage for {path}"):
        return client.import_storage.local.create(
            project=project_id,
            path=str(path),
            title=title,
            use_blob_urls=use_blob_urls,
            **{key: value for key, value in optional.items() if value},
        )


def ensure_local_storage(
    client: LabelStudio,
    project_id: int,
    path: str | Path,
    document_root: str | Path,
    probe: str | Path | None = None,
) -> Any:
    """A local-files import storage of the project whose path contains ``path``.

    ``document_root`` must be the server's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``. When
    ``probe`` (a file under ``path``) is given, it is fetched through Label Studio with the API
    key, which proves that images will show (a wrong document root gives 404 here).
    """
    storage_path = _storage_path(path, document_root)
    with errors(client, f"list the local storages of project {project_id}"):
        storages = list(client.import_storage.local.list(project=project_id))
    storage = next((s for s in storages if _covers(s.path, storage_path)), None)
    if storage is None:
        try:
            storage = create_local_storage(
                client,
                project_id,
                storage_path,
                title=STORAGE_TITLE,
                description="Serves the dataset images; tasks come from robustar-ls import, "
                "so this storage is not meant to be synced.",
                regex_filter=STORAGE_NEVER_MATCH,
            )
        except LabelStudioError as err:
            raise LabelStudioError(
                f"{err}. Label Studio must run with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                f"and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={document_root} (what --document-root "
                "says), and the dataset must exist at the same path on the server"
            ) from err
        log.info("created local-files storage %s for %s", storage.id, storage_path)
    if probe is not None:
        check_image_url(client, local_files_url(probe, document_root), document_root)
    return storage


def check_image_url(client: LabelStudio, url: str, document_root: str | Path = "") -> None:
    """Fetch one task image URL through Label Studio with the API key; explain failures."""
    response = http_get(client, url)
    if response.status_code == 200:
        return
    if response.status_code == 403:
        raise LabelStudioError(
            f"Label Studio refused to serve {url} (HTTP 403): start it with "
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true"
        )
    if response.status_code == 401:
        raise LabelStudioError(KEY_REFUSED)
    raise LabelStudioError(
        f"Label Studio could not serve {url} (HTTP {response.status_code}): --document-root "
        f"{document_root} must be exactly the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, "
        "and the dataset must be at the same path on the server"
    )
