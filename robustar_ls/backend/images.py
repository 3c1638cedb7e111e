"""Fetch a task's image: from the document root on disk, from Label Studio, or over HTTP(S).

Image references, as they appear in task data:

- ``/data/local-files/?d=<rel>``: Label Studio local storage. Read directly from
  ``document_root/<rel>`` (no HTTP), refusing any path that leaves the document root. Without a
  document root it is fetched from Label Studio instead.
- ``/data/upload/…``, ``/storage-data/…`` and other URLs starting with ``/``: fetched from Label
  Studio with its API key (legacy token → ``Token``; personal access token = JWT refresh token →
  exchanged for an access token, ``Bearer``; label-studio-sdk does the exchange and caching).
  An absolute file path inside the document root is read from disk instead.
- ``http(s)://…``: fetched only from Label Studio's origin and the hosts the operator allows
  (:mod:`robustar_ls.backend.url_policy`); redirects only within the same origin; the API key
  is sent only to Label Studio's own host.
- a relative path (``train/cat/1.png``): read from under the document root.
- anything else (``s3://``, ``data:`` …): refused as an unknown URL scheme.

Every failure is an :class:`ImageFetchError` with an HTTP-like status and a message that says
what to fix; sizes are limited in bytes and pixels (decompression bombs) by the fetcher's
:class:`~robustar_ls.backend.decoding.ImageLimits`, built once from the serve settings
(:meth:`ImageFetcher.from_config`).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import httpx
from PIL import Image

from robustar_ls.backend.decoding import ImageLimits, ImageTooLarge, PixelBudget, decode_limited
from robustar_ls.backend.url_policy import UrlNotAllowed, UrlPolicy, origin
from robustar_ls.data.images import ImageLoadError
from robustar_ls.errors import RobustarError
from robustar_ls.labelstudio import client as ls_client

log = logging.getLogger(__name__)

LABEL_STUDIO_PREFIXES = ("/data/", "/storage-data/", "/upload/", "data/", "upload/")
MAX_REDIRECTS = 3
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")


class ImageFetchError(RobustarError, ValueError):
    """A task image cannot be fetched or decoded; ``status`` is the HTTP-like cause."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FetchedImage:
    """A decoded RGB image and what identifies its content for caching."""

    image: Image.Image
    ref: str
    identity: str  # "file:<path>:<mtime_ns>:<size>" or "sha256:<hex of the bytes>"
    path: Path | None = None  # the file on disk, when read from the document root
    size: tuple[int, int] | None = None  # displayed (width, height) when ``image`` is reduced

    @property
    def original_size(self) -> tuple[int, int]:
        """The size Label Studio shows the image at (regions and masks are drawn at it)."""
        return self.size or self.image.size


class LabelStudioAuth:
    """The ``Authorization`` header for Label Studio, from a legacy token or a PAT.

    A personal access token is a JWT *refresh* token: it is exchanged at
    ``POST /api/token/refresh/`` for a short-lived access token sent as ``Bearer``. The client
    module (:mod:`robustar_ls.labelstudio.client`) lets label-studio-sdk detect the token kind,
    refresh and cache the access token (thread-safe), rather than re-implementing that.
    """

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._client = None
        self._lock = threading.Lock()

    def header(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        try:
            with self._lock:
                if self._client is None:
                    self._client = ls_client.open_client(self.url, self.api_key)
            return ls_client.auth_headers(self._client)
        except ls_client.LabelStudioError as err:
            raise ImageFetchError(str(err), status=502) from err


class ImageFetcher:
    """Resolve and load task images (see the module docstring for the accepted references)."""

    def __init__(
        self,
        document_root: str | Path | None = None,
        label_studio_url: str = "",
        auth: LabelStudioAuth | None = None,
        limits: ImageLimits | None = None,
        timeout: float = 30.0,
        session: httpx.Client | None = None,
        policy: UrlPolicy | None = None,
    ) -> None:
        self.document_root = Path(document_root).resolve() if document_root else None
        self.label_studio_url = label_studio_url.rstrip("/")
        self.auth = auth
        self.limits = limits or ImageLimits()
        self.timeout = timeout
        self.session = session or httpx.Client(follow_redirects=False)
        self.policy = policy or UrlPolicy(self.label_studio_url)

    @classmethod
    def from_config(cls, cfg) -> ImageFetcher:
        """Build from a :class:`robustar_ls.config.ServeConfig`."""
        auth = LabelStudioAuth(cfg.label_studio_url, cfg.label_studio_api_key)
        return cls(
            document_root=cfg.document_root or None,
            label_studio_url=cfg.label_studio_url,
            auth=auth,
            limits=ImageLimits(
                max_bytes=cfg.max_image_bytes,
                max_pixels=cfg.max_image_pixels,
                max_side=cfg.max_image_side,
                max_aspect=cfg.max_aspect_ratio,
                working_side=cfg.working_side,
            ),
            timeout=cfg.fetch_timeout,
            policy=UrlPolicy(cfg.label_studio_url, cfg.allowed_image_hosts),
        )

    # -- resolving ------------------------------------------------------------------------

    def local_path(self, ref: str) -> Path | None:
        """The file under the document root that ``ref`` names, or None if it is not local.

        Raises :class:`ImageFetchError` (403) when ``ref`` tries to leave the document root.
        """
        if not isinstance(ref, str) or not ref:
            raise ImageFetchError("the task has no image reference (empty value)", 400)
        if "\x00" in ref:
            raise ImageFetchError(
                f"image reference {ref[:120]!r} cannot be used: it holds a NUL byte", 400
            )
        parsed = urlparse(ref)
        if _SCHEME.match(ref):
            same_host = bool(self.label_studio_url) and (
                parsed.netloc == urlparse(self.label_studio_url).netloc
            )
            if not (same_host and parsed.path.rstrip("/").endswith("/data/local-files")):
                return None
        path = parsed.path if ref.startswith("/") or _SCHEME.match(ref) else ref
        if path.rstrip("/").endswith("/data/local-files") or path.startswith("data/local-files"):
            values = parse_qs(parsed.query, keep_blank_values=True).get("d")
            relative = values[-1] if values else ""
            if not relative:
                raise ImageFetchError(f"local-files URL {ref!r} has no ?d=<path>", 400)
            if self.document_root is None:
                return None  # fetched from Label Studio, which knows its document root
            # Same normalisation as Label Studio's /data/local-files/ view.
            return self._under_root(posixpath.normpath(relative).lstrip("/"), ref)
        if ref.startswith(LABEL_STUDIO_PREFIXES):
            return None
        if ref.startswith("/"):
            if self.document_root is not None:
                candidate = Path(ref).resolve()
                if candidate.is_relative_to(self.document_root) and candidate.is_file():
                    return candidate
            return None  # a URL relative to Label Studio
        if self.document_root is None:
            raise ImageFetchError(
                f"image {ref!r} is a relative path but no document root is configured; "
                "start the backend with --document-root",
                400,
            )
        return self._under_root(ref, ref)

    def _under_root(self, relative: str, ref: str) -> Path:
        assert self.document_root is not None
        candidate = (self.document_root / relative).resolve()
        if not candidate.is_relative_to(self.document_root):
            raise ImageFetchError(
                f"image {ref!r} points outside the document root; refused", status=403
            )
        return candidate

    def remote_url(self, ref: str) -> str:
        """The absolute URL to download ``ref`` from (not for local files)."""
        match = _SCHEME.match(ref)
        if match:
            if match.group(1).lower() in ("http", "https"):
                return ref
            raise ImageFetchError(
                f"unknown URL scheme {match.group(1)!r} in image {ref[:80]!r}; use "
                "/data/local-files/?d=…, /data/upload/…, http(s):// or a path under the "
                "document root",
                400,
            )
        if not self.label_studio_url:
            raise ImageFetchError(
                f"image {ref!r} is on Label Studio but no Label Studio URL is configured", 400
            )
        if ref.startswith(("upload/", "/upload/")):
            ref = "/data/" + ref.lstrip("/")
        return urljoin(self.label_studio_url + "/", ref.lstrip("/"))

    # -- loading --------------------------------------------------------------------------

    def fetch(
        self, ref: str, deadline: float | None = None, budget: PixelBudget | None = None
    ) -> FetchedImage:
        """Load the image ``ref`` names as RGB, or raise :class:`ImageFetchError`.

        ``deadline`` (a ``time.monotonic()`` value) bounds a download as a whole, not only
        each read: a server trickling bytes is cut off there (504).
        """
        try:
            return self._fetch(ref, deadline, budget)
        except ImageFetchError:
            raise
        except (ValueError, OSError) as err:  # e.g. a NUL byte in a path, an odd file system
            raise ImageFetchError(
                f"image reference {str(ref)[:120]!r} cannot be used: {err}", 400
            ) from err

    def _fetch(self, ref: str, deadline: float | None, budget: PixelBudget | None) -> FetchedImage:
        path = self.local_path(ref)
        if path is not None:
            return self._read_file(path, ref, budget)
        url = self.remote_url(ref)
        data = self._download(url, ref, deadline)
        image, size = self._decode(data, ref, budget)
        identity = "sha256:" + hashlib.sha256(data).hexdigest()
        return FetchedImage(image, ref, identity, size=size)

    def _read_file(self, path: Path, ref: str, budget: PixelBudget | None) -> FetchedImage:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ImageFetchError(f"image {ref!r} not found under the document root", 404) from None
        except OSError as err:
            raise ImageFetchError(f"cannot read image {ref!r}: {err.strerror}", 403) from err
        if not path.is_file():
            raise ImageFetchError(f"image {ref!r} is not a file", 404)
        max_bytes = self.limits.max_bytes
        if stat.st_size > max_bytes:
            raise ImageFetchError(
                f"image {ref!r} is {stat.st_size} bytes, over the limit of {max_bytes}", 413
            )
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ImageFetchError(f"cannot read image {ref!r}: {err.strerror}", 403) from err
        image, size = self._decode(data, ref, budget)  # errors name ref, not the server path
        identity = f"file:{path}:{stat.st_mtime_ns}:{stat.st_size}"
        return FetchedImage(image, ref, identity, path, size)

    def _headers_for(self, url: str) -> dict[str, str]:
        if self.auth is None or not self.label_studio_url:
            return {}
        if urlparse(url).netloc != urlparse(self.label_studio_url).netloc:
            return {}  # never send Label Studio's key to another host
        return self.auth.header()

    def _download(self, url: str, ref: str, deadline: float | None = None) -> bytes:
        """GET ``url``: allowed origins only, redirects followed only within the origin."""
        first = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self.policy.check(url)
            except UrlNotAllowed as err:
                raise ImageFetchError(f"image {ref[:120]!r}: {err}", 403) from err
            data, location = self._get(url, ref, deadline)
            if location is None:
                return data
            url = urljoin(url, location)
            if origin(url) != origin(first):
                raise ImageFetchError(
                    f"image {ref[:120]!r} redirects to another origin ({origin(url)[1]}); refused",
                    403,
                )
        raise ImageFetchError(f"image {ref[:120]!r}: more than {MAX_REDIRECTS} redirects", 502)

    def _remaining(self, deadline: float | None, ref: str) -> float:
        """Seconds this download may still take (the fetch timeout, or less near the deadline)."""
        if deadline is None:
            return self.timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise ImageFetchError(f"image {ref[:120]!r}: the request's deadline passed", 504)
        return min(self.timeout, left)

    def _get(self, url: str, ref: str, deadline: float | None) -> tuple[bytes, str | None]:
        """The body of ``url``, or ``(b"", location)`` for a redirect."""
        headers = self._headers_for(url)
        timeout = self._remaining(deadline, ref)
        try:
            with self.session.stream("GET", url, headers=headers, timeout=timeout) as resp:
                if resp.is_redirect and resp.headers.get("Location"):
                    return b"", resp.headers["Location"]
                if resp.status_code == 404:
                    raise ImageFetchError(f"image {ref!r} not found (HTTP 404 from {url})", 404)
                if resp.status_code in (401, 403):
                    raise ImageFetchError(
                        f"{url} refused to serve image {ref!r} (HTTP {resp.status_code}); "
                        "check LABEL_STUDIO_API_KEY and the Label Studio URL",
                        502,
                    )
                if resp.status_code != 200:
                    raise ImageFetchError(
                        f"fetching image {ref!r} from {url} failed with HTTP {resp.status_code}",
                        502,
                    )
                max_bytes = self.limits.max_bytes
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise ImageFetchError(
                        f"image {ref!r} is {declared} bytes, over the limit of {max_bytes}", 413
                    )
                chunks, size = [], 0
                for chunk in resp.iter_bytes(chunk_size=1 << 16):
                    self._remaining(deadline, ref)
                    size += len(chunk)
                    if size > max_bytes:
                        raise ImageFetchError(
                            f"image {ref!r} is over the limit of {max_bytes} bytes", 413
                        )
                    chunks.append(chunk)
                return b"".join(chunks), None
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            raise ImageFetchError(
                f"cannot fetch image {ref!r} from {url}: {type(err).__name__}", 502
            ) from err

    def _decode(
        self, data: bytes, ref: str, budget: PixelBudget | None
    ) -> tuple[Image.Image, tuple[int, int]]:
        try:
            return decode_limited(data, f"image {ref[:120]!r}", self.limits, budget)
        except ImageTooLarge as err:
            raise ImageFetchError(str(err), 413) from err
        except ImageLoadError as err:
            raise ImageFetchError(str(err), 422) from err
