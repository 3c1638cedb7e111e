"""The one door to label-studio-sdk: connecting, auth, errors, retries and raw HTTP.

This is the only module that touches the SDK's private parts (``client._client_wrapper``: the
base URL, the auth header, the httpx client); ``tests/test_labelstudio_client_sdk.py`` pins the
behaviour relied on. Every SDK or transport error becomes a :class:`LabelStudioError` saying
what to fix, through :func:`errors` (one call) or :func:`with_retries` (an idempotent read,
retried on connection errors, timeouts and 5xx answers with the one :class:`RetryPolicy`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from label_studio_sdk._extensions.pager_ext import SyncPagerExt
from label_studio_sdk.base_client import LabelStudioBase
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.projects.client import ProjectsClient
from label_studio_sdk.tasks.client_ext import TasksClientExt

from robustar_ls.config import SyncConfig
from robustar_ls.errors import RobustarError

log = logging.getLogger(__name__)

KEY_REFUSED = (
    "the API key was refused; use a legacy token or a personal access token from "
    "Account & Settings (set LABEL_STUDIO_API_KEY)"
)
# the SDK retries by itself (twice, with its own backoff); ours is the one retry policy
NO_SDK_RETRIES = {"max_retries": 0}
_HINTS = {
    403: "; the API key's user may not read this project",
    404: "; does the project exist?",
}


class LabelStudioError(RobustarError, RuntimeError):
    """A Label Studio call failed; the message says what to fix."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio stopped answering (connection errors, timeouts, 5xx) after the retries."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of an idempotent read: ``retries`` more tries, waiting ``backoff``·2^k seconds.

    The defaults are the settings' (:class:`robustar_ls.config.SyncConfig`), declared there once.
    """

    retries: int = SyncConfig.retries
    backoff: float = SyncConfig.backoff
    sleep: Callable[[float], None] = time.sleep


# -- the client -----------------------------------------------------------------------------


class _Projects(ProjectsClient):
    """``client.projects`` with the SDK's paging that ends on Label Studio's 404 past the end."""

    def list(self, **kwargs: Any) -> SyncPagerExt:
        return SyncPagerExt.from_sync_pager(super().list(**kwargs))


class LabelStudio(LabelStudioBase):
    """``label_studio_sdk.LabelStudio`` without its extras that import pandas and the label
    interface (export to data frames, ``get_label_interface``): seconds of start-up that a
    data command does not use. ``tasks`` and ``projects`` page like the SDK's client.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tasks_ext: TasksClientExt | None = None
        self._projects_ext: _Projects | None = None

    @property
    def tasks(self) -> TasksClientExt:  # type: ignore[override]
        if self._tasks_ext is None:
            self._tasks_ext = TasksClientExt(client_wrapper=self._client_wrapper)
        return self._tasks_ext

    @property
    def projects(self) -> _Projects:  # type: ignore[override]
        if self._projects_ext is None:
            self._projects_ext = _Projects(client_wrapper=self._client_wrapper)
        return self._projects_ext


# -- errors ---------------------------------------------------------------------------------


def base_url(client: Any) -> str:
    """The Label Studio URL a label-studio-sdk client talks to (for messages)."""
    wrapper = getattr(client, "_client_wrapper", None)
    getter = getattr(wrapper, "get_base_url", None)
    return str(getter()) if callable(getter) else "(unknown URL)"


def _detail(err: Exception) -> str:
    body = getattr(err, "body", "")
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


def refusal(err: Exception, url: str, request: str) -> LabelStudioError:
    """The error for an HTTP answer refusing ``request`` ("to list projects", "page 2 of ...")."""
    status = getattr(err, "status_code", None)
    if status == 401:
        return LabelStudioError(KEY_REFUSED)
    hint = _HINTS.get(status, "") if isinstance(status, int) else ""
    return LabelStudioError(
        f"Label Studio at {url} refused {request} (HTTP {status}): {_detail(err)}{hint}"
    )


@contextmanager
def errors(client_or_url: Any, action: str) -> Iterator[None]:
    """Turn SDK and transport errors of one call into :class:`LabelStudioError`."""
    try:
        yield
    except httpx.TransportError as err:
        url = client_or_url if isinstance(client_or_url, str) else base_url(client_or_url)
        raise LabelStudioError(
            f"cannot reach Label Studio at {url}: {err or type(err).__name__}; is it running?"
        ) from err
    except ApiError as err:
        url = client_or_url if isinstance(client_or_url, str) else base_url(client_or_url)
        raise refusal(err, url, f"to {action}") from err
    except ValueError as err:  # not JSON (an HTML page, a PNG) or JSON of another shape
        url = client_or_url if isinstance(client_or_url, str) else base_url(client_or_url)
        raise LabelStudioError(
            f"{url} does not answer like Label Studio (asked to {action}, got something else "
            f"than its JSON: {type(err).__name__}); check --label-studio-url"
        ) from err


def is_transient(err: BaseException) -> bool:
    """Connection errors, timeouts and 5xx answers are worth retrying; 4xx are not."""
    if isinstance(err, httpx.TransportError | ConnectionError | TimeoutError):
        return True
    status = getattr(err, "status_code", None)
    return isinstance(status, int) and status >= 500


def with_retries(call: Callable[[], Any], what: str, url: str, policy: RetryPolicy) -> Any:
    """Run the idempotent ``call``, retrying transient errors (see :class:`RetryPolicy`).

    A refusal (4xx) is a :class:`LabelStudioError` at once; transient errors that outlast the
    retries are a :class:`LabelStudioUnavailable`.
    """
    for attempt in range(policy.retries + 1):
        try:
            return call()
        except Exception as err:
            if not is_transient(err):
                if not isinstance(getattr(err, "status_code", None), int):
                    raise
                raise refusal(err, url, what) from err
            if attempt == policy.retries:
                raise LabelStudioUnavailable(
                    f"Label Studio at {url} stopped answering while fetching {what} "
                    f"({policy.retries + 1} tries): {type(err).__name__}: {err}"
                ) from err
            delay = policy.backoff * (2**attempt)
            log.warning(
                "Label Studio at %s: %s failed (%s); retry %d/%d in %.1fs",
                url,
                what,
                err,
                attempt + 1,
                policy.retries,
                delay,
            )
            policy.sleep(delay)
    raise AssertionError("unreachable")


# -- connection and auth --------------------------------------------------------------------


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
    with errors(url, "accept the API key"):
        # an expired personal access token is refused here, before any request
        client = LabelStudio(base_url=url, api_key=api_key, timeout=timeout)
    try:
        with errors(url, "answer /api/current-user/whoami"):
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
    url = base_url(client)
    try:
        headers = client._client_wrapper.get_headers()
    except ApiError as err:
        raise LabelStudioError(_key_not_accepted(url, err)) from err
    except Exception as err:  # httpx errors or a non-JSON answer while refreshing a PAT
        raise LabelStudioError(
            f"cannot get an access token from Label Studio at {url} ({type(err).__name__}: {err})"
        ) from err
    return {"Authorization": headers["Authorization"]}


def http_get(client: LabelStudio, url: str) -> httpx.Response:
    """GET a Label Studio URL (absolute, or a path on its server) with the client's key.

    Through the SDK's own httpx client, so connection settings are shared; transport errors
    become :class:`LabelStudioError`, the answer (any status) is returned.
    """
    full = base_url(client) + url if url.startswith("/") else url
    headers = auth_headers(client)
    with errors(client, f"serve {url}"):
        return client._client_wrapper.httpx_client.httpx_client.get(full, headers=headers)


def every_item(list_page: Callable[[int], Any], page_size: int) -> Iterator[Any]:
    """The items of a paged SDK list, ``list_page(number)`` page by page, up to the last page
    by the reported total (``total`` for tasks, ``count`` for projects) or a short page.

    The SDK's own pager asks for one page past the end (it has a next page whenever the last
    one held items), which Label Studio answers with a 404 and logs as a ``NotFound: Invalid
    page`` traceback.
    """
    number = 1
    while True:
        pager = list_page(number)
        items = list(pager.items or [])
        yield from items
        response = getattr(pager, "response", None)
        total = getattr(response, "total", None)
        if total is None:
            total = getattr(response, "count", None)
        more = number * page_size < int(total) if total is not None else len(items) >= page_size
        if not items or not more:
            return
        number += 1
