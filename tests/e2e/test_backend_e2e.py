"""The ML backend behind a real Label Studio 1.23: connect, predictions, smart tools, saliency."""

from __future__ import annotations

from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from PIL import Image

from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.brush import rle_to_mask

from .backend_fixtures import import_with_backend

pytestmark = pytest.mark.e2e


def test_label_studio_stores_our_predictions(label_studio, dataset, backend):
    client = label_studio.client("legacy")
    pid, ml_id = import_with_backend(label_studio, dataset, backend)
    assert client.ml.get(ml_id).state == "CO"  # /health and /setup (basic auth) passed
    client.actions.create(
        id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []}
    )
    tasks = ls.tasks_by_image(client, pid)
    assert tasks
    for relpath, task in tasks.items():
        predictions = list(client.predictions.list(task=task.id))
        assert len(predictions) == 1, relpath
        prediction = predictions[0]
        assert prediction.model_version == backend.version
        by_label = {}
        for region in prediction.result:
            if region["type"] == "textarea":
                text = region["value"]["text"][0]
                assert text.startswith("Predicted: ")
                assert f"True: {task.data['true_class']}" in text
            else:
                assert region["type"] == "brushlabels"
                by_label[region["value"]["brushlabels"][0]] = region
        assert set(by_label) == {"Spurious", "Model attention"}
        size = (by_label["Spurious"]["original_width"], by_label["Spurious"]["original_height"])
        assert size == (16, 16)
        mask = rle_to_mask(by_label["Spurious"]["value"]["rle"], 16, 16)
        assert mask.shape == (16, 16)

        # the task's $saliency URL is ours, signed, and serves the current model's heatmap
        url = task.data["saliency"]
        assert url.startswith(backend.url + "/saliency/")
        heatmap = requests.get(url, timeout=60)
        assert heatmap.status_code == 200 and heatmap.headers["Content-Type"] == "image/png"
        assert heatmap.headers["X-Model-Version"] == backend.version
        parsed = urlparse(url)
        forged = f"{backend.url}{parsed.path}?sig=0000"
        assert requests.get(forged, timeout=30).status_code == 403


def test_smart_key_point_through_label_studio(label_studio, dataset, backend):
    client = label_studio.client("legacy")
    pid, ml_id = import_with_backend(label_studio, dataset, backend)
    relpath, task = sorted(ls.tasks_by_image(client, pid).items())[0]
    context = {
        "result": [
            {
                "original_width": 16,
                "original_height": 16,
                "image_rotation": 0,
                "value": {"x": 3.125, "y": 3.125, "width": 1, "keypointlabels": ["Pick colour"]},
                "is_positive": True,
                "id": "kp1",
                "from_name": "colour_pick",
                "to_name": "image",
                "type": "keypointlabels",
                "origin": "manual",
            }
        ]
    }
    response = requests.post(
        f"{label_studio.url}/api/ml/{ml_id}/interactive-annotating",
        json={"task": task.id, "context": context},
        headers=label_studio.auth_headers(),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    (region,) = body["data"]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Spurious"]
    mask = rle_to_mask(region["value"]["rle"], 16, 16) > 0
    image = np.asarray(Image.open(dataset / "train" / relpath).convert("RGB"))
    seed = image[0, 0].astype(int)
    expected = np.abs(image.astype(int) - seed).max(axis=2) <= 24  # the default tolerance
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize("backend", [("legacy", False), ("pat", False)], indirect=True)
def test_images_downloaded_from_label_studio_with_either_token(label_studio, dataset, backend):
    client = label_studio.client("legacy")
    pid, _ = import_with_backend(label_studio, dataset, backend)
    client.actions.create(
        id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []}
    )
    task = next(iter(ls.tasks_by_image(client, pid).values()))
    (prediction,) = client.predictions.list(task=task.id)
    assert prediction.model_version == backend.version and prediction.result
