"""Fetch a weights file once per machine, safely: what ``torch.hub`` does, plus a timeout and a
lock.

:func:`fetch_once` downloads ``url`` to ``dest`` the way ``torch.hub.download_url_to_file``
does (a ``.partial`` file beside ``dest``, SHA-256 checked against the hash prefix in the file
name, then an atomic rename: an interrupted or corrupt download never leaves a file at
``dest``), with a socket timeout (so an unreachable host fails in seconds, not minutes),
progress as log lines, and an exclusive file lock beside ``dest``: several processes (gunicorn
workers) asking at once make one download; the others wait for the lock and find the file.

Shared by every weights file fetched the torch.hub way (Mask R-CNN's COCO weights for ``serve``,
the ImageNet backbones of ``train --pretrained``): where it lives (:func:`hub_checkpoint_path`)
and when nothing may be downloaded (:func:`offline_from_env`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from robustar_ls.errors import RobustarError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's convention: name-<sha256 prefix>.pth
OFFLINE_ENV = ("ROBUSTAR_LS_OFFLINE", "HF_HUB_OFFLINE")  # set to 1 / true: no downloads
_NO = ("", "0", "false", "no", "off")


class DownloadFailed(RobustarError, RuntimeError):
    """The file could not be fetched; the message says from where and why."""


def expected_hash_prefix(url: str) -> str | None:
    """The SHA-256 prefix torch.hub reads from a file name like ``x-73cbd019.pth`` (or None)."""
    match = HASH_PREFIX.search(os.path.basename(urlparse(url).path))
    return match.group(1) if match and match.group(1) else None


def offline_from_env(env: Mapping[str, str] | None = None) -> bool:
    """True when ``ROBUSTAR_LS_OFFLINE`` or Hugging Face's ``HF_HUB_OFFLINE`` is set (not 0)."""
    env = os.environ if env is None else env
    return any(env.get(name, "").strip().lower() not in _NO for name in OFFLINE_ENV)


def hub_checkpoint_path(url: str) -> Path:
    """Where torch.hub keeps the file of ``url``: ``<torch.hub.get_dir()>/checkpoints/<name>``
    (``$TORCH_HOME/hub/checkpoints``; torchvision's own loaders read it there too)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def fetch_once(url: str, dest: Path, *, timeout: float = 10.0) -> bool:
    """Make sure ``dest`` exists: download ``url`` there unless it is there already.

    Returns True when this call downloaded it, False when it was there (perhaps fetched
    meanwhile by another process holding the lock). Raises :class:`DownloadFailed` on any
    failure (unreachable host, HTTP error, timeout, hash mismatch, disk full), with nothing
    left at ``dest``. A failure seen by another process while this one waited is not retried.
    """
    dest = Path(dest)
    failed = dest.with_name(dest.name + ".failed")
    asked = time.time()
    with _locked(dest.with_name(dest.name + ".lock")):
        if dest.is_file():
            return False
        if failed.is_file() and failed.stat().st_mtime >= asked:
            raise DownloadFailed(failed.read_text().strip() + " (another process tried)")
        try:
            _download(url, dest, timeout=timeout)
        except DownloadFailed as err:
            failed.write_text(str(err))
            raise
        failed.unlink(missing_ok=True)
        return True


def _download(url: str, dest: Path, *, timeout: float) -> None:
    partial = dest.with_name(f"{dest.name}.{uuid.uuid4().hex}.partial")
    prefix = expected_hash_prefix(url)
    try:
        with urlopen(Request(url, headers={"User-Agent": "torch.hub"}), timeout=timeout) as u:
            total = int(u.headers.get("Content-Length") or 0)
            digest = _copy(u, partial, total, url)
        if prefix and not digest.startswith(prefix):
            raise DownloadFailed(
                f"{url}: the file's SHA-256 {digest[:16]}... does not start with {prefix}"
            )
        os.replace(partial, dest)
    except DownloadFailed:
        raise
    except (OSError, ValueError, HTTPException) as err:  # URLError, timeouts: OSErrors
        raise DownloadFailed(f"cannot download {url}: {type(err).__name__}: {err}") from err
    finally:
        partial.unlink(missing_ok=True)


def _copy(source, partial: Path, total: int, url: str) -> str:
    """Stream ``source`` into ``partial`` (fsynced), logging every 10 %; its SHA-256."""
    sha256 = hashlib.sha256()
    done, next_report = 0, 0.1
    with open(partial, "wb") as out:
        while chunk := source.read(CHUNK):
            out.write(chunk)
            sha256.update(chunk)
            done += len(chunk)
            if total and done / total >= next_report:
                log.info("downloading %s: %3.0f%% of %.0f MB", url, 100 * done / total, total / 1e6)
                next_report += 0.1
        out.flush()
        os.fsync(out.fileno())
    if total and done != total:
        raise DownloadFailed(f"{url}: got {done} of {total} bytes")
    return sha256.hexdigest()
