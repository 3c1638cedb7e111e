"""Fuzzing the HTTP API: whatever the body, the answer is JSON 2xx/4xx, and the app still serves.

Hypothesis draws request bodies for ``/predict``, ``/setup`` and ``/webhook``: arbitrary JSON,
and bodies shaped like Label Studio's with wrong types in every field. Image references stay
local (document root, traversal attempts, unreachable Label Studio paths): no network.
"""

from __future__ import annotations

import json

import pytest
from backend_support import local_ref, make_backend, task
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustar_ls.labelstudio.config import default_label_config

pytestmark = pytest.mark.filterwarnings("ignore")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20).filter(lambda t: not t.lower().startswith(("http", "//"))),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
image_refs = st.sampled_from(
    [
        local_ref("ds/train/circle/c0.png"),
        local_ref("../../etc/passwd"),
        local_ref(""),
        "ds/train/square/s0.png",
        "/data/upload/1/missing.png",
        "s3://bucket/key.png",
        "data:image/png;base64,AAAA",
        "ds/none.png",
        "\x00",
    ]
)
tasks = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "id": json_values,
            "data": st.one_of(json_values, st.fixed_dictionaries({"image": image_refs})),
        }
    ),
)
regions = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["keypointlabels", "rectanglelabels", "brushlabels", 5]),
        "value": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {
                    "x": st.one_of(st.floats(), json_values),
                    "y": st.floats(),
                    "width": st.floats(),
                    "height": st.floats(),
                }
            ),
        ),
        "is_positive": json_values,
    }
)
predict_bodies = st.fixed_dictionaries(
    {
        "tasks": st.one_of(json_values, st.lists(tasks, min_size=1, max_size=3)),
        "label_config": st.one_of(st.none(), st.just(default_label_config()), json_values),
        "params": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {
                    "context": st.one_of(
                        json_values,
                        st.fixed_dictionaries(
                            {"result": st.one_of(json_values, st.lists(regions, max_size=2))}
                        ),
                    )
                }
            ),
        ),
    }
)
webhook_bodies = st.fixed_dictionaries(
    {
        "action": st.one_of(
            st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"]),
            json_values,
        ),
        "annotation": json_values,
        "task": json_values,
        "project": json_values,
    }
)
requests = st.one_of(
    st.tuples(st.just("/predict"), st.one_of(predict_bodies, json_values)),
    st.tuples(st.just("/setup"), json_values),
    st.tuples(st.just("/webhook"), st.one_of(webhook_bodies, json_values)),
    st.tuples(st.sampled_from(["/predict", "/setup", "/webhook"]), st.binary(max_size=40)),
)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return make_backend(tmp_path_factory.mktemp("fuzz"), segmenter=False, cache_size=0)


def send(client, path, body):
    if isinstance(body, bytes):
        return client.post(path, data=body, content_type="application/json")
    return client.post(path, data=json.dumps(body), content_type="application/json")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests)
def test_every_answer_is_json_2xx_or_4xx(backend, request):
    path, body = request
    response = send(backend.client, path, body)
    text = response.get_data(as_text=True)
    assert response.status_code < 500, (path, body, text)
    assert isinstance(json.loads(text), dict), text
    assert "Traceback" not in text


def test_still_serving_after_the_fuzzing(backend):
    response = backend.client.post("/predict", json={"tasks": [task("ds/train/circle/c0.png")]})
    assert response.status_code == 200
    assert response.get_json()["results"][0]["result"]
