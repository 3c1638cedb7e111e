"""The Flask app through its test client: every route, bad inputs, auth, hot reload."""

from __future__ import annotations

import base64
import logging
from urllib.parse import urlparse

import numpy as np
import pytest
from backend_support import (
    SECRET,
    FakeJobs,
    local_ref,
    make_backend,
    save_tiny_checkpoint,
    task,
    two_tone,
    write_png,
)
from PIL import Image

from robustar_ls.labelstudio.config import default_label_config
from robustar_ls.labelstudio.urls import image_key, saliency_url, sign


@pytest.fixture
def backend(tmp_path):
    return make_backend(tmp_path)


def predict(client, tasks, **extra):
    return client.post("/predict", json={"tasks": tasks, **extra})


def assert_clean_error(response, status, fragment):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict) and fragment in body["error"]
    assert "Traceback" not in response.get_data(as_text=True)


# -- health / setup / versions ---------------------------------------------------------------


def test_health(backend):
    response = backend.client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "UP" and body["model_class"] and body["model_version"]


def test_setup_returns_the_checkpoint_version(backend):
    response = backend.client.post(
        "/setup", json={"project": "1.1700000000", "schema": default_label_config()}
    )
    assert response.status_code == 200
    assert response.get_json() == {"model_version": backend.version}


def test_versions_without_training(backend):
    body = backend.client.get("/versions").get_json()
    assert body == {
        "versions": [backend.version],
        "model_version": backend.version,
        "training": None,
    }
    assert_clean_error(backend.client.get("/train/status"), 501, "training is not configured")


# -- predict ----------------------------------------------------------------------------------


def test_predict_shape_matches_label_studio_ml(backend):
    response = predict(
        backend.client,
        [task("ds/train/circle/c0.png", 7)],
        label_config=default_label_config(),
        project="1.1700000000",
        params={"login": None, "password": None, "context": None},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["results"] and len(body["results"]) == 1
    prediction = body["results"][0]
    assert set(prediction) == {"model_version", "score", "result"}
    assert prediction["model_version"] == backend.version
    assert 0 < prediction["score"] <= 1
    types = sorted(r["type"] for r in prediction["result"])
    assert types == ["brushlabels", "brushlabels", "textarea"]


def test_predict_without_label_config_uses_the_default(backend):
    body = predict(backend.client, [task("ds/train/circle/c0.png")]).get_json()
    names = {r["from_name"] for r in body["results"][0]["result"]}
    assert names == {"prediction_summary", "spurious"}


def test_renamed_tags_are_found_by_type(backend):
    config = (
        default_label_config()
        .replace('name="spurious"', 'name="paint"')
        .replace('name="image"', 'name="photo"')
        .replace('toName="image"', 'toName="photo"')
        .replace('value="$image"', 'value="$picture"')
        .replace('name="prediction_summary"', 'name="what_the_model_says"')
    )
    tasks = [{"id": 1, "data": {"picture": local_ref("ds/train/circle/c0.png")}}]
    result = predict(backend.client, tasks, label_config=config).get_json()["results"][0]
    assert {r["from_name"] for r in result["result"]} == {"paint", "what_the_model_says"}
    assert {r["to_name"] for r in result["result"]} == {"photo"}


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "JSON object"),
        ({"data": "", "content_type": "application/json"}, 400, "JSON object"),
        ({"json": [1, 2]}, 400, "JSON object"),
        ({"json": {}}, 400, "non-empty list"),
        ({"json": {"tasks": []}}, 400, "non-empty list"),
        ({"json": {"tasks": "x"}}, 400, "non-empty list"),
        ({"json": {"tasks": [{"data": {}}], "label_config": 3}}, 400, "label_config"),
    ],
)
def test_malformed_requests_get_clear_json_errors(backend, kwargs, status, fragment):
    assert_clean_error(backend.client.post("/predict", **kwargs), status, fragment)


@pytest.mark.parametrize(
    "config",
    [
        "<View><Text name='t' value='$text'/><Choices name='c' toName='t'>"
        "<Choice value='a'/></Choices></View>",
        "<View><Image name='image' value='$image'/><Choices name='c' toName='image'>"
        "<Choice value='a'/></Choices></View>",
        "<View><Image name='image' value='$image'/><BrushLabels name='b' toName='image'>"
        "<Label value='Other'/></BrushLabels></View>",
        "<View><Image",
    ],
)
def test_label_config_without_the_tags_is_a_422(backend, config):
    response = predict(backend.client, [task("ds/train/circle/c0.png")], label_config=config)
    assert_clean_error(response, 422, "label config cannot be used")


def test_bad_tasks_get_empty_results_and_never_fail_their_neighbours(backend, caplog):
    (backend.root / "ds" / "notes.png").write_text("this is not a PNG")
    tasks = [
        task("ds/train/circle/c0.png", 1),
        {"id": 2, "data": {"image": "s3://bucket/x.png"}},
        task("ds/train/circle/missing.png", 3),
        task("ds/notes.png", 4),
        {"id": 5, "data": {"text": "no image here"}},
        {"id": 6},
        "not a task",
        task("../outside.png", 8),
        {"id": 9, "data": {"image": "/data/local-files/?d=a%00b.png"}},
        task("ds/train/square/s0.png", 10),
    ]
    response = predict(backend.client, tasks)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    full = [bool(r["result"]) for r in results]
    assert full == [True] + [False] * 8 + [True]
    assert all(r["model_version"] == backend.version for r in results)
    log = caplog.text
    for reason in (
        "unknown URL scheme",
        "not found",
        "not an image",
        "no image under $image",
        "no 'data' object",
        "outside the document root",
        "cannot be used",
    ):
        assert reason in log


def test_internal_error_is_a_500_without_traceback_and_the_app_stays_up(backend, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(backend.predictor, "predict", boom)
    response = predict(backend.client, [task("ds/train/circle/c0.png")])
    assert_clean_error(response, 500, "internal error")
    assert "secret internals" not in response.get_data(as_text=True)
    monkeypatch.undo()
    assert predict(backend.client, [task("ds/train/circle/c0.png")]).status_code == 200


def test_unknown_route_and_method_are_json(backend):
    assert_clean_error(backend.client.get("/nope"), 404, "Not Found")
    assert_clean_error(backend.client.get("/predict"), 405, "Method Not Allowed")


# -- hot reload -------------------------------------------------------------------------------


def test_new_checkpoint_is_served_without_restart(backend):
    first = predict(backend.client, [task("ds/train/circle/c0.png")]).get_json()
    assert first["results"][0]["model_version"] == backend.version
    v2 = save_tiny_checkpoint(backend.checkpoint, seed=5, parent=backend.version)
    assert v2 != backend.version
    second = predict(backend.client, [task("ds/train/circle/c0.png")]).get_json()
    assert second["results"][0]["model_version"] == v2
    assert backend.client.post("/setup", json={}).get_json()["model_version"] == v2
    assert backend.client.get("/versions").get_json()["model_version"] == v2

    # A truncated new file (a writer that is not atomic) keeps v2 serving.
    data = backend.checkpoint.read_bytes()
    backend.checkpoint.write_bytes(data[: len(data) // 3])
    third = predict(backend.client, [task("ds/train/circle/c0.png")]).get_json()
    assert third["results"][0]["model_version"] == v2
    assert backend.client.get("/health").get_json()["model_version"] == v2


# -- auth --------------------------------------------------------------------------------------


def basic(user, password):
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_basic_auth_on_every_route_but_the_health_check_and_signed_saliency(tmp_path):
    """What the README says: `/health` and signed `/saliency/…` skip basic auth; the
    task-centre page `/` does not."""
    backend = make_backend(tmp_path, auth=("ls", "pa55"))
    client = backend.client
    assert client.get("/health").status_code == 200
    for method, path in [
        ("post", "/predict"),
        ("post", "/setup"),
        ("post", "/webhook"),
        ("get", "/versions"),
        ("get", "/train/status"),
        ("get", "/"),
    ]:
        response = getattr(client, method)(path, json={})
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        wrong = getattr(client, method)(path, json={}, headers=basic("ls", "nope"))
        assert wrong.status_code == 401
    ok = client.post(
        "/predict", json={"tasks": [task("ds/train/circle/c0.png")]}, headers=basic("ls", "pa55")
    )
    assert ok.status_code == 200 and ok.get_json()["results"][0]["result"]
    # The signed saliency URL is its own authorisation (a browser <img> cannot send ours).
    url = saliency_url("http://backend", local_ref("ds/train/circle/c0.png"), SECRET)
    parsed = urlparse(url)
    assert client.get(f"{parsed.path}?{parsed.query}").status_code == 200


def test_auth_off_when_not_configured(backend):
    assert backend.client.get("/versions").status_code == 200


# -- saliency heatmaps ----------------------------------------------------------------------


def get_saliency(backend, ref):
    parsed = urlparse(saliency_url("http://backend:9090", ref, SECRET))
    return backend.client.get(f"{parsed.path}?{parsed.query}")


def test_signed_saliency_png_is_served_and_cached_per_model_version(backend):
    ref = local_ref("ds/train/circle/c0.png")
    response = get_saliency(backend, ref)
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["X-Model-Version"] == backend.version
    image = Image.open(__import__("io").BytesIO(response.data))
    assert image.size == (24, 16)  # the original image's size, not the classifier's
    cached = list((backend.cfg.resolved_cache_dir() / "saliency").rglob("*.png"))
    assert len(cached) == 1 and cached[0].read_bytes() == response.data
    assert get_saliency(backend, ref).data == response.data
    etag = response.headers["ETag"]
    parsed = urlparse(saliency_url("http://backend:9090", ref, SECRET))
    again = backend.client.get(f"{parsed.path}?{parsed.query}", headers={"If-None-Match": etag})
    assert again.status_code == 304

    v2 = save_tiny_checkpoint(backend.checkpoint, seed=9, parent=backend.version)
    fresh = get_saliency(backend, ref)
    assert fresh.status_code == 200 and fresh.headers["X-Model-Version"] == v2
    folders = [p.name for p in (backend.cfg.resolved_cache_dir() / "saliency").iterdir()]
    assert folders == [v2]  # the old version's heatmaps are pruned


def test_saliency_follows_a_changed_image_file(backend):
    ref = local_ref("ds/train/circle/c0.png")
    first = get_saliency(backend, ref).data
    write_png(backend.root / "ds/train/circle/c0.png", two_tone(30, 20, (1, 1, 5, 5)))
    second = get_saliency(backend, ref)
    assert second.status_code == 200 and second.data != first
    assert Image.open(__import__("io").BytesIO(second.data)).size == (30, 20)


def test_bad_or_missing_signature_is_403(backend):
    key = image_key(local_ref("ds/train/circle/c0.png"))
    assert_clean_error(backend.client.get(f"/saliency/{key}.png"), 403, "signature")
    assert_clean_error(backend.client.get(f"/saliency/{key}.png?sig=00ff"), 403, "signature")
    other = image_key(local_ref("ds/train/square/s0.png"))
    stolen = sign(key, SECRET, 4_000_000_000)
    assert_clean_error(
        backend.client.get(f"/saliency/{other}.png?exp=4000000000&sig={stolen}"), 403, "signature"
    )
    later = "/saliency/{key}.png?exp=4000000001&sig={stolen}"  # a changed expiry breaks it too
    assert_clean_error(backend.client.get(later.format(key=key, stolen=stolen)), 403, "signature")
    wrong_secret = sign(key, "another-secret-0123456789")
    assert_clean_error(
        backend.client.get(f"/saliency/{key}.png?sig={wrong_secret}"), 403, "signature"
    )


def test_signed_urls_still_cannot_leave_the_document_root(backend, tmp_path):
    write_png(tmp_path / "private.png", two_tone())
    assert_clean_error(get_saliency(backend, local_ref("../private.png")), 403, "outside")
    # An absolute path outside the root is not read from disk: it is taken as a URL relative
    # to Label Studio (unreachable here), never as a file.
    response = get_saliency(backend, str(tmp_path / "private.png"))
    assert_clean_error(response, 502, "http://127.0.0.1:9/")
    assert_clean_error(get_saliency(backend, local_ref("ds/none.png")), 404, "not found")


# -- webhook ---------------------------------------------------------------------------------


def test_start_training_without_jobs_is_a_clear_501(backend):
    response = backend.client.post(
        "/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}
    )
    assert_clean_error(response, 501, "training is not configured")


def test_start_training_runs_one_job_at_a_time(tmp_path):
    jobs = FakeJobs()
    backend = make_backend(tmp_path, jobs=jobs)
    payload = {"action": "START_TRAINING", "project": {"id": 3, "label_config": "<View/>"}}
    first = backend.client.post("/webhook", json=payload)
    assert first.status_code == 201
    assert first.get_json()["status"] == "ok" and first.get_json()["result"]["state"] == "running"
    assert jobs.payloads == [payload]
    second = backend.client.post("/webhook", json=payload)
    assert second.status_code == 200 and second.get_json()["status"] == "busy"
    assert len(jobs.payloads) == 1
    assert backend.client.get("/train/status").get_json()["state"] == "running"
    assert backend.client.get("/versions").get_json()["training"]["state"] == "running"


def test_annotation_events_are_acknowledged_and_routed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="robustar_ls.backend.app")
    seen = []
    backend = make_backend(tmp_path, annotation_hook=lambda event, body: seen.append(event) or 1)
    for event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"):
        body = {"action": event, "annotation": {"id": 11}, "task": {"id": 5}, "project": {"id": 1}}
        response = backend.client.post("/webhook", json=body)
        assert response.status_code == 200
        assert response.get_json() == {"status": "ok", "event": event, "result": 1}
    assert seen == ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"]
    assert "annotation 11 of task 5" in caplog.text
    other = backend.client.post("/webhook", json={"action": "PROJECT_UPDATED"})
    assert other.status_code == 200 and other.get_json()["status"] == "Unknown event"
    assert_clean_error(
        backend.client.post("/webhook", data="x", content_type="application/json"), 400, "JSON"
    )


def test_brush_masks_come_back_at_the_original_size(backend):
    from robustar_ls.labelstudio.brush import rle_to_mask

    result = predict(backend.client, [task("ds/train/square/s0.png")]).get_json()["results"][0]
    brushes = [r for r in result["result"] if r["type"] == "brushlabels"]
    for region in brushes:
        assert (region["original_width"], region["original_height"]) == (20, 12)
        mask = rle_to_mask(region["value"]["rle"], 12, 20)
        assert mask.shape == (12, 20)
    spurious = next(r for r in brushes if r["value"]["brushlabels"] == ["Spurious"])
    expected = np.ones((12, 20), dtype=bool)
    expected[3:8, 2:9] = False  # the bright box is the object
    assert np.array_equal(rle_to_mask(spurious["value"]["rle"], 12, 20) > 0, expected)


def test_webhook_with_the_real_training_jobs(tmp_path):
    import threading

    from robustar_ls.workflows.jobs import TrainingJobs

    release = threading.Event()

    def run(payload, on_progress):
        release.wait(10)
        return {"model_version": "v2-test", "project": payload["project"]["id"]}

    jobs = TrainingJobs(run, state_dir=tmp_path / "training")
    backend = make_backend(tmp_path, jobs=jobs)
    payload = {"action": "START_TRAINING", "project": {"id": 4}}
    assert backend.client.post("/webhook", json=payload).status_code == 201
    busy = backend.client.post("/webhook", json=payload)
    assert busy.status_code == 200 and busy.get_json()["status"] == "busy"
    release.set()
    jobs.wait(timeout=10)
    status = backend.client.get("/train/status").get_json()
    assert status["state"] == "succeeded" and status["result"]["project"] == 4


def test_half_set_basic_auth_refuses_to_build_the_app(tmp_path):
    from robustar_ls.config import ConfigError

    with pytest.raises(ConfigError, match="BASIC_AUTH_USER is set but BASIC_AUTH_PASS is not"):
        make_backend(tmp_path, auth=("ls", ""))


def test_serve_refuses_half_set_basic_auth_in_one_line(tmp_path, monkeypatch, capsys):
    from robustar_ls.cli import main

    save_tiny_checkpoint(tmp_path / "m.pt")
    monkeypatch.setenv("BASIC_AUTH_PASS", "secret-only")
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    code = main(["serve", "--checkpoint", str(tmp_path / "m.pt"), "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "BASIC_AUTH_PASS is set but BASIC_AUTH_USER is not" in err
    assert len(err.splitlines()) == 1


# -- malformed requests get a 400, never a 500 (issue 10, item 8) -------------------------------


@pytest.mark.parametrize("context", [{"result": 5}, {"result": "x"}, 7, {"result": [1, "a"]}])
def test_malformed_context_is_a_400(backend, context):
    response = predict(
        backend.client, [task("ds/train/circle/c0.png")], params={"context": context}
    )
    assert_clean_error(response, 400, "context")


def test_json_nested_100000_deep_is_a_400(backend):
    body = '{"tasks": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for path in ("/predict", "/setup", "/webhook"):
        response = backend.client.post(path, data=body, content_type="application/json")
        assert_clean_error(response, 400, "JSON")


@pytest.mark.parametrize("field", ["annotation", "task"])
@pytest.mark.parametrize("value", ["a string", [1, 2], 5])
def test_webhook_annotation_events_with_a_non_object_are_a_400(backend, field, value):
    body = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1}, "task": {"id": 2}}
    body[field] = value
    response = backend.client.post("/webhook", json=body)
    assert_clean_error(response, 400, f"'{field}'")


def test_signed_saliency_url_with_a_nul_byte_is_a_400(backend):
    url = saliency_url("http://backend", "/data/local-files/?d=ds/a\x00b.png", SECRET)
    parsed = urlparse(url)
    response = backend.client.get(f"{parsed.path}?{parsed.query}")
    assert_clean_error(response, 400, "cannot be used")


# -- saliency URL expiry, renewed by predictions; no server paths in messages (item 9) ------------


def saliency_path(url):
    parsed = urlparse(url)
    return f"{parsed.path}?{parsed.query}"


def test_an_expired_saliency_url_is_refused_until_a_prediction_renews_it(backend):
    ref = local_ref("ds/train/circle/c0.png")
    expired = saliency_url("http://backend", ref, SECRET, lifetime_s=60, now=1_000_000)
    assert_clean_error(backend.client.get(saliency_path(expired)), 403, "expired")
    # Label Studio asks for the task's prediction: the URL in its data is renewed.
    tasks = [{"id": 1, "data": {"image": ref, "saliency": expired}}]
    assert predict(backend.client, tasks).status_code == 200
    assert backend.client.get(saliency_path(expired)).status_code == 200
    # A forged URL in task data renews nothing.
    other = local_ref("ds/train/square/s0.png")
    forged = saliency_url("http://backend", other, "not-the-secret-0123456789", 60, 1_000_000)
    good_sig_elsewhere = saliency_url("http://backend", other, SECRET, 60, 1_000_000)
    predict(backend.client, [{"id": 2, "data": {"image": other, "saliency": forged}}])
    assert_clean_error(backend.client.get(saliency_path(good_sig_elsewhere)), 403, "expired")


def test_a_fresh_saliency_url_is_served_and_a_bad_expiry_is_a_400(backend):
    url = saliency_url("http://backend", local_ref("ds/train/circle/c0.png"), SECRET)
    assert "exp=" in url and backend.client.get(saliency_path(url)).status_code == 200
    tampered = saliency_path(url).replace("exp=", "exp=x")
    assert_clean_error(backend.client.get(tampered), 400, "expiry")


def test_saliency_errors_never_show_server_paths(backend):
    (backend.root / "ds/bad.png").write_bytes(b"not a png at all")
    for ref, status in [("ds/none.png", 404), ("ds/bad.png", 422)]:
        response = get_saliency(backend, local_ref(ref))
        assert_clean_error(response, status, ref)
        assert str(backend.root) not in response.get_data(as_text=True)
