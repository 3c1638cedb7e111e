"""Which image URLs the backend may fetch (server-side request forgery guard).

A task's image URL comes from whoever can create tasks (or call ``/predict``), so the backend
fetches only from:

- the configured Label Studio URL's origin (scheme, host and port), with its API key;
- hosts the operator allows (``--allow-image-host``, repeatable):
  ``images.example.com`` (any port) or ``images.example.com:8443`` (that port) is trusted as
  named, private or loopback address included; ``*.example.com`` (any sub-domain) and ``*``
  (any host) allow only hosts whose every address is public.

Everything else is refused, and so are redirects to another origin (checked by the fetcher).
Local files under the document root never go through HTTP at all.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from robustar_ls.errors import RobustarError

Resolver = Callable[[str], list[str]]


class UrlNotAllowed(RobustarError, ValueError):
    """An image URL the backend must not fetch; the message says how to allow it."""


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, the port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def resolve_addresses(host: str) -> list[str]:
    """Every address ``host`` resolves to (numeric forms like ``2130706433`` included)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({info[4][0] for info in infos})


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_global and not ip.is_multicast


class UrlPolicy:
    """Decides whether an image URL may be fetched (see the module docstring)."""

    def __init__(
        self,
        label_studio_url: str = "",
        allowed_hosts: Sequence[str] = (),
        resolve: Resolver = resolve_addresses,
    ) -> None:
        self.label_studio = origin(label_studio_url) if label_studio_url else None
        self.allowed = [entry.strip().lower() for entry in allowed_hosts if entry.strip()]
        self.resolve = resolve

    def check(self, url: str) -> None:
        """Raise :class:`UrlNotAllowed` unless ``url`` may be fetched."""
        scheme, host, port = origin(url)
        if scheme not in ("http", "https") or not host:
            raise UrlNotAllowed(f"image URL {url[:120]!r} is not an http(s) URL with a host")
        if (scheme, host, port) == self.label_studio:
            return
        for entry in self.allowed:
            if entry in (host, f"{host}:{port}"):
                return  # named by the operator: trusted, private address or not
            if (entry == "*" or (entry.startswith("*.") and host.endswith(entry[1:]))) and (
                self._public(host)
            ):
                return
        raise UrlNotAllowed(
            f"image host {host}:{port} is not allowed: images are fetched only from Label "
            "Studio's URL, the document root and hosts given with --allow-image-host "
            "(private and loopback addresses only when named exactly)"
        )

    def _public(self, host: str) -> bool:
        try:
            addresses = self.resolve(host)
        except (OSError, UnicodeError):
            return False
        return bool(addresses) and all(is_public(a) for a in addresses)
