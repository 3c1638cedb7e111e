"""Bounded memory per request: per-image limits on the header, a pixel budget per request, task
and answer-size limits, each a clear per-task error; large images decoded at reduced size
(issue 10, item 4)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from backend_support import make_backend, task, two_tone, use_settings, write_png
from PIL import Image

from robustar_ls.backend.decoding import ImageLimits
from robustar_ls.backend.images import ImageFetcher, ImageFetchError
from robustar_ls.backend.limits import RequestLimits


def predict(backend, tasks):
    response = backend.client.post("/predict", json={"tasks": tasks})
    assert response.status_code == 200
    return response.get_json()["results"]


def test_a_60_million_by_1_png_is_refused_from_its_header(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    Image.new("1", (60_000_000, 1)).save(root / "line.png")  # ~60 KB on disk
    assert (root / "line.png").stat().st_size < 200_000
    with pytest.raises(ImageFetchError, match="60000000x1 pixels, over the limit of 12000") as e:
        ImageFetcher(document_root=root).fetch("line.png")
    assert e.value.status == 413


@pytest.mark.parametrize(
    ("size", "limits", "fragment"),
    [
        ((3000, 100), ImageLimits(), "aspect ratio over the limit of 20"),
        ((300, 300), ImageLimits(max_pixels=50_000), "over the limit of 50000 pixels"),
        ((300, 200), ImageLimits(max_side=250), "over the limit of 250 pixels per side"),
    ],
)
def test_per_image_limits(tmp_path, size, limits, fragment):
    write_png(tmp_path / "a.png", np.zeros((size[1], size[0], 3)))
    with pytest.raises(ImageFetchError, match=fragment):
        ImageFetcher(document_root=tmp_path, limits=limits).fetch("a.png")


def test_large_images_are_decoded_at_reduced_size_and_answered_at_full_size(tmp_path):
    backend = make_backend(tmp_path, segmenter=False)
    fetcher = backend.predictor.fetcher
    fetcher.limits = ImageLimits(working_side=256)
    photo = Image.fromarray(np.full((1500, 2000, 3), 90, dtype=np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    (backend.root / "ds/big.jpg").write_bytes(buffer.getvalue())
    write_png(backend.root / "ds/big.png", two_tone(1800, 600, (100, 100, 900, 500)))
    for name, size in [("ds/big.jpg", (2000, 1500)), ("ds/big.png", (1800, 600))]:
        item = fetcher.fetch(name)
        assert item.original_size == size and max(item.image.size) <= 256
        (result,) = predict(backend, [task(name)])
        brushes = [r for r in result["result"] if r["type"] == "brushlabels"]
        assert brushes and all((r["original_width"], r["original_height"]) == size for r in brushes)


def test_request_pixel_budget_task_count_and_answer_size(tmp_path):
    backend = make_backend(tmp_path, segmenter=False, cache_size=0)
    names = ["ds/train/circle/c0.png", "ds/train/square/s0.png", "ds/test/triangle/t0.png"]
    tasks = [task(name, task_id=i) for i, name in enumerate(names)]
    pixels = 24 * 16 + 20 * 12 + 16 * 16
    use_settings(backend, limits=RequestLimits(max_pixels=pixels - 1))
    results = predict(backend, tasks)
    refused = [r for r in results if "budget" in r.get("error", "")]
    assert len(refused) == 1 and refused[0]["result"] == []
    assert sum(bool(r["result"]) for r in results) == 2

    use_settings(backend, limits=RequestLimits(max_tasks=2))
    results = predict(backend, tasks)
    assert [bool(r["result"]) for r in results] == [True, True, False]
    assert "over the limit of 2 tasks per request" in results[2]["error"]

    one = len(json.dumps(predict(backend, tasks[:1])[0]))
    use_settings(backend, limits=RequestLimits(max_response_bytes=int(one * 1.5)))
    results = predict(backend, tasks)
    assert results[0]["result"] and "error" not in results[0]
    assert all("would exceed" in r["error"] and not r["result"] for r in results[1:])
