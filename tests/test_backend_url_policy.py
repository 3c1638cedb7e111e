"""SSRF guard: image URLs only from Label Studio's origin and allowed hosts, no cross-origin
redirects (issue 10, item 2)."""

from __future__ import annotations

from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import pytest
from backend_support import png_bytes, two_tone
from http_support import local_http_server

from robustar_ls.backend.images import ImageFetcher, ImageFetchError
from robustar_ls.backend.url_policy import UrlNotAllowed, UrlPolicy

ADDRESSES = {
    "public.example.com": ["93.184.216.34"],
    "cdn.images.example.com": ["93.184.216.35"],
    "sneaky.images.example.com": ["10.0.0.7"],
    "localhost": ["127.0.0.1", "::1"],
}


def fake_resolve(host):
    if host not in ADDRESSES:
        raise OSError("unknown host")
    return ADDRESSES[host]


def policy(*allowed):
    return UrlPolicy("http://ls.internal:8080", allowed, resolve=fake_resolve)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x.png",
        "http://localhost:8080/x.png",
        "http://2130706433/x.png",
        "http://[::1]:9090/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://ls.internal:8081/x.png",  # another port of Label Studio's host
        "https://ls.internal:8080/x.png",  # another scheme
        "http://public.example.com/x.png",  # public, but not allowed
        "ftp://ls.internal:8080/x.png",
    ],
)
def test_only_label_studio_origin_by_default(url):
    with pytest.raises(UrlNotAllowed, match="allow-image-host|http"):
        policy().check(url)
    policy().check("http://ls.internal:8080/data/upload/1/x.png")
    policy().check("http://LS.internal/data/../x.png".replace("/data/..", ":8080"))


def test_allowed_hosts_exact_port_wildcard_and_any_public():
    policy("127.0.0.1:9000").check("http://127.0.0.1:9000/x.png")  # named exactly: trusted
    with pytest.raises(UrlNotAllowed):
        policy("127.0.0.1:9000").check("http://127.0.0.1:9001/x.png")
    policy("public.example.com").check("https://public.example.com:444/x.png")
    policy("*.images.example.com").check("http://cdn.images.example.com/x.png")
    with pytest.raises(UrlNotAllowed):  # a wildcard never reaches a private address
        policy("*.images.example.com").check("http://sneaky.images.example.com/x.png")
    policy("*").check("http://public.example.com/x.png")
    for url in ("http://localhost/x.png", "http://unknown.invalid/x.png"):
        with pytest.raises(UrlNotAllowed):
            policy("*").check(url)


@contextmanager
def image_server(routes):
    """``routes``: path → bytes (a PNG) or ("redirect", location)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            target = routes.get(self.path)
            if isinstance(target, tuple):
                self.send_response(302)
                self.send_header("Location", target[1])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = target or b""
            self.send_response(200 if target else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with local_http_server(Handler) as url:
        yield url


def test_loopback_urls_and_cross_origin_redirects_are_refused():
    png = png_bytes(two_tone())
    with image_server({"/secret.png": png}) as internal:
        routes = {
            "/img.png": png,
            "/same": ("redirect", "/img.png"),
            "/away": ("redirect", internal + "/secret.png"),
        }
        with image_server(routes) as ls:
            fetcher = ImageFetcher(label_studio_url=ls)
            assert fetcher.fetch(ls + "/img.png").image.size == (24, 16)
            assert fetcher.fetch(ls + "/same").image.size == (24, 16)  # same origin: followed
            for ref, fragment in [
                (internal + "/secret.png", "not allowed"),
                (ls + "/away", "another origin"),
                (internal.replace("127.0.0.1", "2130706433") + "/secret.png", "not allowed"),
            ]:
                with pytest.raises(ImageFetchError, match=fragment) as err:
                    fetcher.fetch(ref)
                assert err.value.status == 403
            port = internal.rsplit(":", 1)[1]
            allowed = ImageFetcher(label_studio_url=ls, policy=UrlPolicy(ls, [f"127.0.0.1:{port}"]))
            assert allowed.fetch(internal + "/secret.png").image.size == (24, 16)
