"""Smart tools: /predict with params.context, shaped as Label Studio 1.23 sends it."""

from __future__ import annotations

import numpy as np
import pytest
from backend_support import make_backend, task

from robustar_ls.labelstudio.brush import rle_to_mask

WIDTH, HEIGHT = 24, 16
BOX = (4, 4, 12, 10)  # the yellow object in two_tone(): x0, y0, x1, y1


def object_mask():
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    x0, y0, x1, y1 = BOX
    mask[y0:y1, x0:x1] = True
    return mask


def keypoint(x_px, y_px, positive=True):
    """A smart key point as the labeling frontend serialises it (see the SAM example)."""
    return {
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "value": {
            "x": (x_px + 0.5) * 100 / WIDTH,
            "y": (y_px + 0.5) * 100 / HEIGHT,
            "width": 0.5,
            "keypointlabels": ["Pick colour"],
        },
        "is_positive": positive,
        "id": "kp1",
        "from_name": "colour_pick",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def rectangle(x0, y0, x1, y1):
    return {
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "value": {
            "x": x0 * 100 / WIDTH,
            "y": y0 * 100 / HEIGHT,
            "width": (x1 - x0) * 100 / WIDTH,
            "height": (y1 - y0) * 100 / HEIGHT,
            "rotation": 0,
            "rectanglelabels": ["Object"],
        },
        "id": "rc1",
        "from_name": "object_box",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }


def interactive(backend, *context_regions):
    response = backend.client.post(
        "/predict",
        json={
            "tasks": [task("ds/train/circle/c0.png", 42)],
            "project": "1.1700000000",
            "params": {
                "login": None,
                "password": None,
                "context": {"result": list(context_regions)},
            },
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert len(results) == 1
    return results[0]


def the_mask(prediction):
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "spurious"
    assert region["to_name"] == "image"
    assert region["value"]["brushlabels"] == ["Spurious"]
    assert (region["original_width"], region["original_height"]) == (WIDTH, HEIGHT)
    return rle_to_mask(region["value"]["rle"], HEIGHT, WIDTH) > 0


@pytest.fixture
def backend(tmp_path):
    return make_backend(tmp_path)


def test_key_point_selects_the_clicked_colour_range(backend):
    on_object = interactive(backend, keypoint(6, 6))
    assert np.array_equal(the_mask(on_object), object_mask())
    on_background = interactive(backend, keypoint(1, 1))
    assert np.array_equal(the_mask(on_background), ~object_mask())
    assert on_object["model_version"] == backend.version


def test_negative_key_point_removes_its_colour_range(backend):
    both = interactive(backend, keypoint(1, 1), keypoint(6, 6, positive=False))
    assert np.array_equal(the_mask(both), ~object_mask())
    nothing = interactive(backend, keypoint(6, 6), keypoint(6, 6, positive=False))
    assert nothing["result"] == []


def test_rectangle_selects_the_object_inside_it(backend):
    prediction = interactive(backend, rectangle(2, 2, 14, 12))
    assert np.array_equal(the_mask(prediction), object_mask())
    assert backend.detector.calls  # the segmenter was asked


def test_rectangle_without_segmenter_uses_the_fallback_inside_the_box(tmp_path):
    backend = make_backend(tmp_path, segmenter=False)
    mask = the_mask(interactive(backend, rectangle(2, 2, 14, 12)))
    inside = np.zeros_like(mask)
    inside[2:12, 2:14] = True
    assert mask.any() and not (mask & ~inside).any()


def test_unsupported_or_broken_context_regions_give_an_empty_result(backend):
    brush = {"type": "brushlabels", "value": {"format": "rle", "rle": [0]}}
    assert interactive(backend, brush)["result"] == []
    broken = keypoint(1, 1)
    del broken["value"]["x"]
    assert interactive(backend, broken)["result"] == []
    # a broken region next to a good one: the good one still counts
    assert np.array_equal(the_mask(interactive(backend, broken, keypoint(6, 6))), object_mask())


def test_clicks_on_the_border_are_clipped_into_the_image(backend):
    edge = keypoint(WIDTH - 1, HEIGHT - 1)
    edge["value"]["x"], edge["value"]["y"] = 100.0, 100.0
    assert np.array_equal(the_mask(interactive(backend, edge)), ~object_mask())


def test_empty_context_means_a_normal_prediction(backend):
    response = backend.client.post(
        "/predict",
        json={"tasks": [task("ds/train/circle/c0.png")], "params": {"context": {"result": []}}},
    )
    types = sorted(r["type"] for r in response.get_json()["results"][0]["result"])
    assert types == ["brushlabels", "brushlabels", "textarea"]


def test_interactive_on_a_missing_image_is_an_empty_result(backend):
    response = backend.client.post(
        "/predict",
        json={"tasks": [task("ds/none.png")], "params": {"context": {"result": [keypoint(1, 1)]}}},
    )
    assert response.status_code == 200 and response.get_json()["results"][0]["result"] == []


def test_a_failing_segmenter_fails_only_its_region(backend, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(backend.predictor.segmenter, "box_mask", broken)
    assert interactive(backend, rectangle(2, 2, 14, 12))["result"] == []
    both = interactive(backend, rectangle(2, 2, 14, 12), keypoint(6, 6))
    assert np.array_equal(the_mask(both), object_mask())


def test_brush_label_keeps_the_region_label_the_brush_has():
    from robustar_ls.backend.interactive import brush_label

    assert brush_label("Background", ["Background", "Spurious"]) == "Background"
    assert brush_label("Cat", ["Background", "Spurious"]) == "Spurious"
    assert brush_label(None, ["Background"]) == "Background"
    assert brush_label(None, []) == "Spurious"
