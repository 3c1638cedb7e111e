from __future__ import annotations

import numpy as np
import pytest
from backend_support import FakeLabelStudio, make_jwt, png_bytes, two_tone, write_png

from robustar_ls.backend.decoding import ImageLimits
from robustar_ls.backend.images import ImageFetcher, ImageFetchError, LabelStudioAuth
from robustar_ls.backend.url_policy import UrlPolicy


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "docroot"
    write_png(root / "ds" / "train" / "circle" / "a.png", two_tone())
    (tmp_path / "secret.png").write_bytes(png_bytes(two_tone()))
    return root


def test_local_files_url_is_read_from_disk_without_http(root):
    fetcher = ImageFetcher(document_root=root, label_studio_url="http://127.0.0.1:9")
    item = fetcher.fetch("/data/local-files/?d=ds/train/circle/a.png")
    assert item.path == (root / "ds/train/circle/a.png").resolve()
    assert item.image.size == (24, 16) and item.image.mode == "RGB"
    assert np.array_equal(np.asarray(item.image), two_tone())
    assert item.identity.startswith("file:")


def test_plain_relative_and_absolute_paths_under_the_root(root):
    fetcher = ImageFetcher(document_root=root)
    assert fetcher.fetch("ds/train/circle/a.png").path == (root / "ds/train/circle/a.png").resolve()
    absolute = str((root / "ds/train/circle/a.png").resolve())
    assert fetcher.fetch(absolute).path == (root / "ds/train/circle/a.png").resolve()


@pytest.mark.parametrize(
    "ref",
    [
        "/data/local-files/?d=../secret.png",
        "/data/local-files/?d=ds/../../secret.png",
        "../secret.png",
        "ds/../../secret.png",
        "/data/local-files/?d=%2e%2e/secret.png",
        "/data/local-files/?d=ds%2F..%2F..%2Fsecret.png",
    ],
)
def test_path_traversal_out_of_the_root_is_refused(root, ref):
    fetcher = ImageFetcher(document_root=root)
    with pytest.raises(ImageFetchError, match="outside the document root") as info:
        fetcher.fetch(ref)
    assert info.value.status == 403


def test_symlink_out_of_the_root_is_refused(root, tmp_path):
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ImageFetchError, match="outside the document root"):
        ImageFetcher(document_root=root).fetch("/data/local-files/?d=link.png")


def test_leading_slash_in_local_files_stays_under_the_root(root):
    # Label Studio strips the leading "/" of ?d= too: it is always relative to the root.
    item = ImageFetcher(document_root=root).fetch("/data/local-files/?d=/ds/train/circle/a.png")
    assert item.path == (root / "ds/train/circle/a.png").resolve()


def test_missing_file_non_image_and_unknown_scheme(root):
    fetcher = ImageFetcher(document_root=root)
    with pytest.raises(ImageFetchError, match="not found") as info:
        fetcher.fetch("/data/local-files/?d=ds/nope.png")
    assert info.value.status == 404
    (root / "text.png").write_text("not an image")
    with pytest.raises(ImageFetchError, match="not an image") as info:
        fetcher.fetch("text.png")
    assert info.value.status == 422
    for ref in (
        "s3://bucket/a.png",
        "gs://b/a.png",
        "ftp://host/a.png",
        "data:image/png;base64,AA",
    ):
        with pytest.raises(ImageFetchError, match="unknown URL scheme") as info:
            fetcher.fetch(ref)
        assert info.value.status == 400
    with pytest.raises(ImageFetchError, match="no \\?d="):
        fetcher.fetch("/data/local-files/?x=1")
    with pytest.raises(ImageFetchError, match="empty"):
        fetcher.fetch("")


def test_nul_bytes_and_odd_references_are_clear_400s(root):
    fetcher = ImageFetcher(document_root=root)
    for ref in ("/data/local-files/?d=a%00b.png", "a\x00b.png", "ds/\x00"):
        with pytest.raises(ImageFetchError, match="cannot be used") as info:
            fetcher.fetch(ref)
        assert info.value.status == 400
    with pytest.raises(ImageFetchError, match="no image reference"):
        fetcher.fetch(None)


def test_relative_path_without_document_root_says_what_to_configure():
    with pytest.raises(ImageFetchError, match="--document-root"):
        ImageFetcher().fetch("train/a.png")


def test_size_limits_bytes_and_pixels(root):
    big = write_png(root / "big.png", np.zeros((300, 300, 3), dtype=np.uint8))
    with pytest.raises(ImageFetchError, match="over the limit") as info:
        limits = ImageLimits(max_bytes=big.stat().st_size - 1)
        ImageFetcher(document_root=root, limits=limits).fetch("big.png")
    assert info.value.status == 413
    with pytest.raises(ImageFetchError, match="over the limit of 1000") as info:
        ImageFetcher(document_root=root, limits=ImageLimits(max_pixels=1000)).fetch("big.png")
    assert info.value.status == 413  # over a limit, like the byte limit


def test_uploads_fetched_from_label_studio_with_legacy_token():
    fake = FakeLabelStudio(legacy="abc123")
    fake.files["/data/upload/1/x.png"] = png_bytes(two_tone())
    with fake.running():
        fetcher = ImageFetcher(label_studio_url=fake.url, auth=LabelStudioAuth(fake.url, "abc123"))
        item = fetcher.fetch("/data/upload/1/x.png")
        assert np.array_equal(np.asarray(item.image), two_tone())
        assert item.identity.startswith("sha256:") and item.path is None
        assert fake.requests[-1] == ("GET", "/data/upload/1/x.png", "Token abc123")
        with pytest.raises(ImageFetchError, match="HTTP 404") as info:
            fetcher.fetch("/data/upload/1/missing.png")
        assert info.value.status == 404


def test_personal_access_token_is_exchanged_for_a_bearer_access_token():
    fake = FakeLabelStudio()
    fake.files["/data/upload/2/y.png"] = png_bytes(two_tone(8, 8, (1, 1, 4, 4)))
    with fake.running():
        fetcher = ImageFetcher(
            label_studio_url=fake.url, auth=LabelStudioAuth(fake.url, fake.refresh)
        )
        for _ in range(3):
            assert fetcher.fetch("/data/upload/2/y.png").image.size == (8, 8)
        gets = [r for r in fake.requests if r[0] == "GET"]
        assert {auth for _, _, auth in gets} == {f"Bearer {fake.access}"}
        assert fake.refresh_calls == 1  # the access token is cached until it expires


def test_wrong_or_expired_key_gives_a_clear_error():
    fake = FakeLabelStudio()
    fake.files["/data/upload/1/x.png"] = png_bytes(two_tone())
    with fake.running():
        wrong = ImageFetcher(label_studio_url=fake.url, auth=LabelStudioAuth(fake.url, "nope"))
        with pytest.raises(ImageFetchError, match="LABEL_STUDIO_API_KEY") as info:
            wrong.fetch("/data/upload/1/x.png")
        assert info.value.status == 502
        expired = make_jwt("refresh", lifetime_s=-60)
        stale = ImageFetcher(label_studio_url=fake.url, auth=LabelStudioAuth(fake.url, expired))
        with pytest.raises(ImageFetchError, match="did not accept the API key"):
            stale.fetch("/data/upload/1/x.png")


def test_key_is_never_sent_to_other_hosts():
    fake = FakeLabelStudio(legacy="abc123")
    other = FakeLabelStudio(legacy="zzz")
    other.files["/img.png"] = png_bytes(two_tone())
    with fake.running(), other.running():
        fetcher = ImageFetcher(
            label_studio_url=fake.url,
            auth=LabelStudioAuth(fake.url, "abc123"),
            policy=UrlPolicy(fake.url, [other.url.split("//")[1]]),  # allowed: fetched, no key
        )
        with pytest.raises(ImageFetchError, match="refused"):
            fetcher.fetch(other.url + "/img.png")
        assert other.requests[-1][2] is None


def test_http_url_of_label_studio_local_files_is_read_from_disk(root):
    fetcher = ImageFetcher(document_root=root, label_studio_url="http://ls.example:8080")
    item = fetcher.fetch("http://ls.example:8080/data/local-files/?d=ds/train/circle/a.png")
    assert item.path == (root / "ds/train/circle/a.png").resolve()


def test_unreachable_label_studio_is_a_502():
    fetcher = ImageFetcher(label_studio_url="http://127.0.0.1:9", timeout=2)
    with pytest.raises(ImageFetchError, match="cannot fetch") as info:
        fetcher.fetch("/data/upload/1/x.png")
    assert info.value.status == 502


def test_the_limits_are_built_once_from_the_serve_settings(root):
    from robustar_ls.config import ServeConfig

    cfg = ServeConfig(checkpoint="m.pt", document_root=str(root), max_image_bytes=1234,
                      max_image_pixels=5678, max_image_side=90, max_aspect_ratio=3.0,
                      working_side=64, fetch_timeout=7.0)  # fmt: skip
    fetcher = ImageFetcher.from_config(cfg)
    assert fetcher.limits == ImageLimits(1234, 5678, 90, 3.0, 64)
    assert fetcher.timeout == 7.0 and fetcher.document_root == root.resolve()
