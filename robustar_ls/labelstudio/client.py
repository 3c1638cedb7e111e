"""A thin, typed layer over label-studio-sdk 2.1's ``LabelStudio`` client.

Every function is idempotent where that makes sense (``ensure_*`` find what exists and repair it,
``import_tasks`` skips images that already have a task), so a rerun after a failure converges.
Errors from Label Studio are turned into :class:`LabelStudioError` with a message that says what
to fix; nothing here prints or shows progress bars (pass ``progress`` from the CLI).

Verified against Label Studio 1.23.2 (see ``docs`` in the functions for what was measured).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]

INFLUENCE_VIEW_TITLE = "Most influential first"
STORAGE_TITLE = "robustar-ls dataset"
ML_BACKEND_TITLE = "robustar-ls"
# The local storage only serves files; its "Sync" must never turn the images into extra tasks
# (tasks are imported by `robustar-ls import`, with their metadata), so its filter matches nothing.
STORAGE_NEVER_MATCH = "(?!)"
LOCAL_FILES_PREFIX = "/data/local-files/?d="

KEY_REFUSED = (
    "the API key was refused; use a legacy token or a personal access token from "
    "Account & Settings (set LABEL_STUDIO_API_KEY)"
)


class LabelStudioError(RuntimeError):
    """A Label Studio call failed; the message says what to fix."""


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


# -- errors ---------------------------------------------------------------------------------


def _detail(err: ApiError) -> str:
    body = err.body
    text = str(body)[:500]
    if isinstance(body, dict):
        errors = body.get("validation_errors")
        if errors:
            text = "; ".join(
                f"{key}: {' '.join(map(str, value)) if isinstance(value, list) else value}"
                for key, value in errors.items()
            )
        elif body.get("detail"):
            text = str(body["detail"])
    return re.sub(r"<[^>]+>", "", text)  # Label Studio puts HTML links into some messages


def _base_url(client: LabelStudio) -> str:
    return client._client_wrapper.get_base_url()


@contextmanager
def _errors(client_or_url: LabelStudio | str, action: str) -> Iterator[None]:
    """Turn SDK and transport errors into :class:`LabelStudioError` saying what to fix."""
    try:
        yield
    except httpx.TransportError as err:
        url = client_or_url if isinstance(client_or_url, str) else _base_url(client_or_url)
        raise LabelStudioError(
            f"cannot reach Label Studio at {url}: {err or type(err).__name__}; is it running?"
        ) from err
    except ApiError as err:
        if err.status_code == 401:
            raise LabelStudioError(KEY_REFUSED) from err
        url = client_or_url if isinstance(client_or_url, str) else _base_url(client_or_url)
        raise LabelStudioError(
            f"Label Studio at {url} refused to {action} (HTTP {err.status_code}): {_detail(err)}"
        ) from err


# -- connection -----------------------------------------------------------------------------


def connect(url: str, api_key: str, timeout: float = 60.0) -> LabelStudio:
    """A client for ``url``, checked with one call, for a legacy token or a personal access token.

    A personal access token (a JWT refresh token) is exchanged for short-lived access tokens by
    the SDK itself. Raises :class:`LabelStudioError` when the server cannot be reached or the key
    is refused.
    """
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LabelStudioError(f"Label Studio URL {url!r} must start with http:// or https://")
    if not api_key:
        raise LabelStudioError(
            "no Label Studio API key: set LABEL_STUDIO_API_KEY (a legacy token or a personal "
            "access token from Account & Settings)"
        )
    with _errors(url, "accept the API key"):
        # an expired personal access token is refused here, before any request
        client = LabelStudio(base_url=url, api_key=api_key, timeout=timeout)
    try:
        with _errors(url, "answer /api/current-user/whoami"):
            client.users.whoami()
    except LabelStudioError as err:
        cause = err.__cause__
        if isinstance(cause, ApiError) and cause.status_code in (403, 404):
            raise LabelStudioError(
                f"{url} does not answer like Label Studio 1.2x (HTTP {cause.status_code} from "
                "/api/current-user/whoami); check --label-studio-url"
            ) from cause
        raise
    return client


def open_client(url: str, api_key: str, timeout: float = 60.0) -> LabelStudio:
    """A client for ``url`` without a check call (the key is only tried on the first request).

    Raises :class:`LabelStudioError` when the key is an expired personal access token.
    """
    try:
        return LabelStudio(base_url=url.rstrip("/"), api_key=api_key, timeout=timeout)
    except ApiError as err:
        raise LabelStudioError(_key_not_accepted(url, err)) from err


def _key_not_accepted(url: str, err: ApiError) -> str:
    return (
        f"Label Studio at {url} did not accept the API key (HTTP {err.status_code}: "
        f"{err.body}); set LABEL_STUDIO_API_KEY to a valid legacy token or personal access token"
    )


def auth_headers(client: LabelStudio) -> dict[str, str]:
    """The Authorization header the SDK sends (a fresh access token for a PAT).

    The SDK builds it on every request, exchanging a personal access token for a short-lived
    access token when the cached one has expired (thread-safe). Raises
    :class:`LabelStudioError` when the key is refused or no access token can be had.
    """
    url = _base_url(client)
    try:
        headers = client._client_wrapper.get_headers()
    except ApiError as err:
        raise LabelStudioError(_key_not_accepted(url, err)) from err
    except Exception as err:  # httpx errors or a non-JSON answer while refreshing a PAT
        raise LabelStudioError(
            f"cannot get an access token from Label Studio at {url} ({type(err).__name__}: {err})"
        ) from err
    return {"Authorization": headers["Authorization"]}


# -- projects -------------------------------------------------------------------------------


def find_project(client: LabelStudio, title: str) -> Any | None:
    """The project titled exactly ``title``, or None; an error if several have that title."""
    with _errors(client, "list projects"):
        matches = [p for p in client.projects.list(title=title) if p.title == title]
    if len(matches) > 1:
        ids = ", ".join(str(p.id) for p in matches)
        raise LabelStudioError(
            f"several Label Studio projects are titled {title!r} (ids {ids}); rename or delete "
            "all but one, or choose another --project"
        )
    if not matches:
        return None
    with _errors(client, f"read project {matches[0].id}"):
        return client.projects.get(matches[0].id)


def ensure_project(client: LabelStudio, title: str, label_config: str) -> Any:
    """Find the project titled ``title`` or create it; set its label config if it differs."""
    project = find_project(client, title)
    if project is None:
        with _errors(client, f"create project {title!r}"):
            created = client.projects.create(title=title, label_config=label_config)
        log.info("created Label Studio project %r (id %s)", title, created.id)
        with _errors(client, f"read project {created.id}"):
            return client.projects.get(created.id)
    if (project.label_config or "").strip() != label_config.strip():
        with _errors(client, f"update the label config of project {project.id}"):
            client.projects.update(project.id, label_config=label_config)
        log.info("updated the label config of project %r (id %s)", title, project.id)
        with _errors(client, f"read project {project.id}"):
            return client.projects.get(project.id)
    return project


# -- local files ----------------------------------------------------------------------------


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
    with _errors(client, f"list the local storages of project {project_id}"):
        storages = list(client.import_storage.local.list(project=project_id))
    storage = next((s for s in storages if _covers(s.path, storage_path)), None)
    if storage is None:
        try:
            with _errors(client, f"create a local-files storage for {storage_path}"):
                storage = client.import_storage.local.create(
                    project=project_id,
                    path=storage_path,
                    title=STORAGE_TITLE,
                    description="Serves the dataset images; tasks come from robustar-ls import, "
                    "so this storage is not meant to be synced.",
                    regex_filter=STORAGE_NEVER_MATCH,
                    use_blob_urls=True,
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
    full = _base_url(client) + url if url.startswith("/") else url
    with _errors(client, f"serve {url}"):
        response = client._client_wrapper.httpx_client.httpx_client.get(
            full, headers=auth_headers(client)
        )
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


# -- tasks ----------------------------------------------------------------------------------


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def tasks_by_image(client: LabelStudio, project_id: int, page_size: int = 1000) -> dict[str, Any]:
    """Every task of the project keyed by ``data["relpath"]`` (paged; only id and data).

    Tasks without a ``relpath`` are skipped; if several tasks share one, the lowest id wins.
    """
    found: dict[str, Any] = {}
    with _errors(client, f"list the tasks of project {project_id}"):
        pager = client.tasks.list(
            project=project_id, fields="task_only", include="id,data", page_size=page_size
        )
        for task in pager:
            relpath = (task.data or {}).get("relpath")
            if not relpath:
                continue
            if relpath in found:
                log.warning(
                    "tasks %s and %s both hold image %s", found[relpath].id, task.id, relpath
                )
                if task.id > found[relpath].id:
                    continue
            found[relpath] = task
    return found


def import_tasks(
    client: LabelStudio,
    project_id: int,
    tasks: Sequence[Mapping[str, Any]],
    batch_size: int = 1000,
    progress: Progress | None = None,
    existing: Mapping[str, Any] | None = None,
) -> ImportResult:
    """Import task data dicts in bulk batches, skipping images (``relpath``) that have a task.

    One ``POST /api/projects/{id}/import`` per ``batch_size`` tasks. ``existing`` (from
    :func:`tasks_by_image`) saves listing the project again.
    """
    if existing is None:
        existing = tasks_by_image(client, project_id)
    todo: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    for task in tasks:
        relpath = task.get("relpath")
        if not relpath:
            raise ValueError(f"task data without a 'relpath': {dict(task)}")
        if relpath in existing or relpath in seen:
            continue
        seen.add(relpath)
        todo.append(task)
    batches = _batches(todo, batch_size)
    if progress is not None and batches:
        batches = progress(batches, desc="import", unit="batch")
    ids: list[int] = []
    for batch in batches:
        with _errors(client, f"import {len(batch)} tasks into project {project_id}"):
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
        current = {t.id: t.data for t in tasks_by_image(client, project_id).values()}
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
        with _errors(client, f"update task {task_id}"):
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


# -- ML backend -----------------------------------------------------------------------------


def ensure_ml_backend(
    client: LabelStudio,
    project_id: int,
    url: str,
    basic_auth: tuple[str, str] | None = None,
    title: str = ML_BACKEND_TITLE,
) -> Any:
    """Connect the project to the ML backend at ``url`` (interactive, so smart tools call it).

    An existing backend with this ``title`` or ``url`` is updated (URL, auth), otherwise one is
    created; Label Studio checks ``/health`` and ``/setup`` either way. The backend's
    ``/webhook`` (which Label Studio creates along with a new backend) is ensured as well.
    """
    url = url.rstrip("/")
    auth: dict[str, Any] = {"auth_method": "NONE"}
    if basic_auth:
        auth = {
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": basic_auth[0],
            "basic_auth_pass": basic_auth[1],
        }
    with _errors(client, f"list the ML backends of project {project_id}"):
        backends = list(client.ml.list(project=project_id))
    match = next((b for b in backends if b.title == title), None) or next(
        (b for b in backends if (b.url or "").rstrip("/") == url), None
    )
    try:
        with _errors(client, f"connect the ML backend at {url}"):
            if match is None:
                backend = client.ml.create(
                    project=project_id, url=url, title=title, is_interactive=True, **auth
                )
                log.info("connected ML backend %s at %s", backend.id, url)
            else:
                backend = client.ml.update(
                    match.id, project=project_id, url=url, title=title, is_interactive=True, **auth
                )
            _ensure_webhook(client, project_id, url + "/webhook")
    except LabelStudioError as err:
        raise LabelStudioError(_ml_hint(str(err), url)) from err.__cause__
    return backend


def _ensure_webhook(client: LabelStudio, project_id: int, url: str) -> None:
    hooks = client.webhooks.list(project=str(project_id))
    if any((h.url or "").rstrip("/") == url and h.project == project_id for h in hooks):
        return
    client.webhooks.create(
        project=project_id, url=url, send_payload=True, send_for_all_actions=True
    )


def _ml_hint(message: str, url: str) -> str:
    if "reserved network address" in message:
        return (
            f"{message}. Label Studio refuses ML backend and webhook URLs on local or private "
            "networks by default: start it with ML_BLOCK_LOCAL_IP=false and "
            "SSRF_PROTECTION_ENABLED=false, or give a --backend-url it may call"
        )
    if "health check failed" in message or "Can't connect" in message:
        return (
            f"{message}. Start the backend first (robustar-ls serve), check that Label Studio "
            f"can reach {url} from where it runs, or import without --backend-url"
        )
    if "authentication" in message.lower():
        return f"{message}. Set BASIC_AUTH_USER and BASIC_AUTH_PASS to the backend's credentials"
    return message


# -- Data Manager view ----------------------------------------------------------------------


def influence_view_data(title: str = INFLUENCE_VIEW_TITLE) -> dict[str, Any]:
    """A Data Manager tab sorted by ``data.influence``, highest first, as numbers.

    Label Studio 1.23 orders ``tasks:data.<field>`` as text (on PostgreSQL) unless the view's
    ``columnsDisplayType`` marks the column "Number", which makes it ``CAST(... AS float)``; on
    SQLite JSON numbers compare numerically anyway but strings do not, so both the column type
    and JSON numbers in the task data are used.
    """
    return {
        "title": title,
        "type": "list",
        "target": "tasks",
        "ordering": ["-tasks:data.influence"],
        "columnsDisplayType": {
            "tasks:data.influence": "Number",
            "tasks:data.influence_rank": "Number",
        },
        "filters": {"conjunction": "and", "items": []},
    }


def ensure_influence_view(
    client: LabelStudio, project_id: int, title: str = INFLUENCE_VIEW_TITLE
) -> Any:
    """The project's "Most influential first" Data Manager view (created or repaired)."""
    wanted = influence_view_data(title)
    with _errors(client, f"list the Data Manager views of project {project_id}"):
        views = list(client.views.list(project=project_id))
    view = next((v for v in views if (v.data or {}).get("title") == title), None)
    if view is None:
        with _errors(client, f"create the Data Manager view {title!r}"):
            view = client.views.create(project=project_id, data=wanted)
        log.info("created Data Manager view %r (id %s)", title, view.id)
        return view
    data = dict(view.data or {})
    if data.get("ordering") != wanted["ordering"] or any(
        (data.get("columnsDisplayType") or {}).get(k) != v
        for k, v in wanted["columnsDisplayType"].items()
    ):
        data["ordering"] = wanted["ordering"]
        data["columnsDisplayType"] = {
            **(data.get("columnsDisplayType") or {}),
            **wanted["columnsDisplayType"],
        }
        data.setdefault("filters", wanted["filters"])
        with _errors(client, f"update the Data Manager view {title!r}"):
            view = client.views.update(str(view.id), project=project_id, data=data)
    return view
