from __future__ import annotations

import os
import stat
from urllib.parse import parse_qs, urlparse

import pytest

from robustar_ls.labelstudio.urls import (
    image_key,
    image_ref_from_key,
    load_or_create_secret,
    resolve_secret,
    saliency_url,
    sign,
    verify,
)

REFS = [
    "/data/local-files/?d=train/circle/00001.png",
    "/data/upload/3/a b+c.png",
    "https://example.org/x.jpg?size=large&v=2",
    "train/ünïcode/ø.png",
]


@pytest.mark.parametrize("ref", REFS)
def test_key_round_trips_and_is_url_safe(ref):
    key = image_key(ref)
    assert image_ref_from_key(key) == ref
    assert all(c.isalnum() or c in "-_" for c in key)


def test_malformed_key_is_a_value_error():
    with pytest.raises(ValueError, match="malformed image key"):
        image_ref_from_key("%%%")
    with pytest.raises(ValueError, match="malformed image key"):
        image_ref_from_key("_w")  # decodes to a lone non-UTF-8 byte


def test_signature_depends_on_key_and_secret():
    key = image_key(REFS[0])
    sig = sign(key, "secret-one-0123456789")
    assert verify(key, sig, "secret-one-0123456789")
    assert not verify(key, sig, "secret-two-0123456789")
    assert not verify(image_key(REFS[1]), sig, "secret-one-0123456789")
    assert not verify(key, "", "secret-one-0123456789")
    assert not verify(key, sig[:-1] + ("0" if sig[-1] != "0" else "1"), "secret-one-0123456789")


def test_saliency_url_points_at_the_backend_route():
    url = saliency_url("http://backend:9090/", REFS[0], "s" * 32)
    parsed = urlparse(url)
    assert parsed.netloc == "backend:9090"
    assert parsed.path.startswith("/saliency/") and parsed.path.endswith(".png")
    key = parsed.path[len("/saliency/") : -len(".png")]
    assert image_ref_from_key(key) == REFS[0]
    query = parse_qs(parsed.query)
    expires = int(query["exp"][0])
    assert verify(key, query["sig"][0], "s" * 32, expires)
    assert not verify(key, query["sig"][0], "s" * 32, expires + 1)


def test_secret_file_is_created_once_private_and_shared(tmp_path):
    first = load_or_create_secret(tmp_path / "cache")
    second = load_or_create_secret(tmp_path / "cache")
    assert first == second and len(first) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / "cache" / "secret.key").st_mode)
    assert mode == 0o600
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["secret.key"]  # no temp left


def test_explicit_secret_wins_over_the_file(tmp_path):
    assert resolve_secret("from-env-0123456789", tmp_path) == "from-env-0123456789"
    assert not (tmp_path / "secret.key").exists()
    assert resolve_secret("", tmp_path) == load_or_create_secret(tmp_path)


def test_too_short_secret_file_is_refused(tmp_path):
    (tmp_path / "secret.key").write_text("abc")
    with pytest.raises(ValueError, match="too short"):
        load_or_create_secret(tmp_path)


def test_the_same_url_all_through_a_lifetime_window_and_one_to_two_lifetimes_valid():
    first = saliency_url("http://b", REFS[0], "s" * 32, lifetime_s=100, now=1_000_010)
    assert saliency_url("http://b", REFS[0], "s" * 32, lifetime_s=100, now=1_000_099) == first
    later = saliency_url("http://b", REFS[0], "s" * 32, lifetime_s=100, now=1_000_100)
    assert later != first
    expires = int(parse_qs(urlparse(first).query)["exp"][0])
    assert 1_000_010 + 100 <= expires <= 1_000_010 + 200
