"""Label Studio projects and what hangs off them: the ML backend and its webhook."""

from __future__ import annotations

import logging
from typing import Any

from robustar_ls.labelstudio.client.sdk import LabelStudio, LabelStudioError, errors, every_item

log = logging.getLogger(__name__)

ML_BACKEND_TITLE = "robustar-ls"
PAGE_SIZE = 100  # projects per page when looking one up by title


def find_project(client: LabelStudio, title: str) -> Any | None:
    """The project titled exactly ``title``, or None; an error if several have that title."""
    with errors(client, "list projects"):
        listed = every_item(
            lambda number: client.projects.list(title=title, page=number, page_size=PAGE_SIZE),
            PAGE_SIZE,
        )
        matches = [p for p in listed if p.title == title]
    if len(matches) > 1:
        ids = ", ".join(str(p.id) for p in matches)
        raise LabelStudioError(
            f"several Label Studio projects are titled {title!r} (ids {ids}); rename or delete "
            "all but one, or choose another --project"
        )
    if not matches:
        return None
    with errors(client, f"read project {matches[0].id}"):
        return client.projects.get(matches[0].id)


def ensure_project(client: LabelStudio, title: str, label_config: str) -> Any:
    """Find the project titled ``title`` or create it; set its label config if it differs."""
    project = find_project(client, title)
    if project is None:
        with errors(client, f"create project {title!r}"):
            created = client.projects.create(title=title, label_config=label_config)
        log.info("created Label Studio project %r (id %s)", title, created.id)
        with errors(client, f"read project {created.id}"):
            return client.projects.get(created.id)
    if (project.label_config or "").strip() != label_config.strip():
        with errors(client, f"update the label config of project {project.id}"):
            client.projects.update(project.id, label_config=label_config)
        log.info("updated the label config of project %r (id %s)", title, project.id)
        with errors(client, f"read project {project.id}"):
            return client.projects.get(project.id)
    return project


PAGE_LINK_PREFIX = "Task centre (training progress, model history): "


def description_with_page_link(description: str, url: str) -> str:
    """``description`` with one line linking the backend's page: replaced if there, else added."""
    lines = [line for line in (description or "").splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(PAGE_LINK_PREFIX)]
    return "\n".join([*kept, PAGE_LINK_PREFIX + url])


def ensure_page_link(client: LabelStudio, project: Any, url: str) -> bool:
    """Write the backend page's link into the project description; False when already there."""
    description = description_with_page_link(project.description or "", url)
    if description == (project.description or ""):
        return False
    with errors(client, f"update the description of project {project.id}"):
        client.projects.update(project.id, description=description)
    log.info("project %s links the backend's page %s in its description", project.id, url)
    return True


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
    with errors(client, f"list the ML backends of project {project_id}"):
        backends = list(client.ml.list(project=project_id))
    match = next((b for b in backends if b.title == title), None) or next(
        (b for b in backends if (b.url or "").rstrip("/") == url), None
    )
    try:
        with errors(client, f"connect the ML backend at {url}"):
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


def ml_backend_url(
    client: LabelStudio, project_id: int, title: str = ML_BACKEND_TITLE
) -> str | None:
    """The URL of the project's ML backend titled ``title`` (else its only one), or None."""
    with errors(client, f"list the ML backends of project {project_id}"):
        backends = list(client.ml.list(project=project_id))
    match = next((b for b in backends if b.title == title), None)
    if match is None and len(backends) == 1:
        match = backends[0]
    if match is None or not match.url:
        return None
    return str(match.url).rstrip("/")
