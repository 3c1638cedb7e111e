"""Signed URLs of the backend's saliency heatmaps (no Flask: the import helper uses this too).

Task data is static, but the heatmap must follow the model version on disk. So a task's
``saliency`` field holds a URL of the backend, ``<base>/saliency/<key>.png?sig=<hmac>``, where
``key`` encodes the task's image reference (e.g. ``/data/local-files/?d=train/cat/1.png``) and
``sig`` is an HMAC-SHA256 of the key. The backend serves the heatmap of that image for the model
version it is serving *now*. The signature means nobody can make the backend read an arbitrary
file or URL: only image references that were signed with the secret are served.

A URL expires: ``exp`` (Unix seconds, signed with the key) falls one to two URL lifetimes (7
days by default, long enough for a labeling session) after it was written. Predictions renew
it: when ``/predict`` sees a task whose data holds a validly signed saliency URL, it records
the renewal (:class:`Renewals`, a marker file per key shared by every worker), and the URL
stays valid for another lifetime from then. A URL signed without ``exp`` (older imports) is
valid only while renewed.

The secret must be the same wherever URLs are written (``robustar-ls import``) and checked
(every gunicorn worker of ``robustar-ls serve``): from ``ROBUSTAR_LS_SECRET`` (read by the CLI),
or else the random key in ``<cache_dir>/secret.key``, created once and shared by every process
on the machine.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import re
import secrets
import tempfile
import time
from hashlib import sha256
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

SECRET_FILE = "secret.key"
SIGNATURE_CHARS = 32  # hex characters of the HMAC kept in the URL (128 bits)
_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SALIENCY_PATH = re.compile(r"/saliency/([A-Za-z0-9_-]+)\.png$")
DEFAULT_URL_LIFETIME_S = 7 * 24 * 3600  # a signed heatmap URL's life, renewed by predictions


def load_or_create_secret(cache_dir: str | Path) -> str:
    """The signing key kept in ``<cache_dir>/secret.key``; created (mode 0600) if missing.

    Creation is atomic (write a temp file, then ``os.link`` it into place, which fails if another
    process won the race), so concurrent workers all end up with the same key.
    """
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SECRET_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=".secret.", dir=folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
            # Fails if another process created the file first: then theirs is used.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    secret = path.read_text().strip()
    if len(secret) < 16:
        raise ValueError(
            f"the URL-signing key in {path} is too short; delete the file to make a new one"
        )
    return secret


def resolve_secret(secret: str, cache_dir: str | Path) -> str:
    """``secret`` when given (e.g. from ``ROBUSTAR_LS_SECRET``), else the shared key file."""
    return secret or load_or_create_secret(cache_dir)


def image_key(image_ref: str) -> str:
    """A URL-safe key that encodes an image reference (reversible)."""
    return base64.urlsafe_b64encode(image_ref.encode()).decode().rstrip("=")


def image_ref_from_key(key: str) -> str:
    """The image reference a key encodes; ``ValueError`` for a malformed key."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"malformed image key {key[:40]!r}")
    try:
        return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise ValueError(f"malformed image key {key[:40]!r}") from err


def sign(key: str, secret: str, expires: int | None = None) -> str:
    """The signature of ``key`` valid until ``expires`` (Unix seconds; None: no expiry), hex."""
    if not secret:
        raise ValueError("no URL-signing secret configured")
    message = key if expires is None else f"{key}.{expires}"
    return hmac.new(secret.encode(), message.encode(), sha256).hexdigest()[:SIGNATURE_CHARS]


def verify(key: str, signature: str, secret: str, expires: int | None = None) -> bool:
    """Whether ``signature`` signs ``key`` and ``expires`` (constant-time comparison).

    Says nothing about whether ``expires`` has passed: see :class:`Renewals`.
    """
    if not signature or not secret:
        return False
    return hmac.compare_digest(sign(key, secret, expires), signature)


def saliency_url(
    base_url: str,
    image_ref: str,
    secret: str,
    lifetime_s: float = DEFAULT_URL_LIFETIME_S,
    now: float | None = None,
) -> str:
    """The signed URL of the backend's saliency heatmap of ``image_ref``, valid one to two
    ``lifetime_s``.

    ``base_url`` is the backend as the annotator's browser reaches it, e.g.
    ``http://localhost:9090``.
    """
    key = image_key(image_ref)
    # Expiry at the end of the next lifetime-long window: valid for one to two lifetimes, and
    # the same URL for the same image all through one window, so re-running the import does
    # not rewrite every task.
    window = max(1, int(lifetime_s))
    expires = (int(time.time() if now is None else now) // window + 2) * window
    signature = quote(sign(key, secret, expires))
    return f"{base_url.rstrip('/')}/saliency/{key}.png?exp={expires}&sig={signature}"


def parse_expires(value: str | None) -> int | None:
    """The ``exp`` query value as an int (None when absent); ``ValueError`` when malformed."""
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 12:
        raise ValueError(f"malformed expiry {value[:20]!r} in the saliency URL")
    return int(value)


def signed_url_parts(url: str) -> tuple[str, str, int | None] | None:
    """``(key, sig, exp)`` of a saliency URL, or None when ``url`` is not one."""
    match = _SALIENCY_PATH.search(urlparse(url).path)
    if not match:
        return None
    query = parse_qs(urlparse(url).query)
    try:
        expires = parse_expires((query.get("exp") or [None])[-1])
    except ValueError:
        return None
    return match.group(1), (query.get("sig") or [""])[-1], expires


class Renewals:
    """When each signed saliency URL was last renewed by a prediction.

    One empty marker file per key under ``folder`` (its mtime is the renewal time), so every
    gunicorn worker sees every renewal.
    """

    def __init__(self, folder: str | Path, lifetime_s: float = DEFAULT_URL_LIFETIME_S) -> None:
        self.folder = Path(folder)
        self.lifetime_s = lifetime_s

    def _marker(self, key: str) -> Path:
        return self.folder / sha256(key.encode()).hexdigest()[:32]

    def renew(self, key: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._marker(key).touch()

    def valid(self, key: str, expires: int | None, now: float | None = None) -> bool:
        """Whether a URL (already verified) with this ``expires`` is still to be served."""
        now = time.time() if now is None else now
        if expires is not None and now <= expires:
            return True
        try:
            renewed = self._marker(key).stat().st_mtime
        except OSError:
            return False
        return now <= renewed + self.lifetime_s
