"""Pins the label-studio-sdk behaviour that robustar_ls.labelstudio.client.sdk relies on.

``sdk.py`` is the one module allowed to touch the SDK's private parts; if an SDK upgrade
changes any of these, this file fails first, naming what moved.
"""

from __future__ import annotations

import httpx
import pytest
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from robustar_ls.labelstudio.client import sdk
from tests.backend_support import FakeLabelStudio, make_jwt


def test_client_wrapper_gives_base_url_headers_and_an_httpx_client():
    client = LabelStudio(base_url="http://ls.test:1234", api_key="legacy-abc")
    wrapper = client._client_wrapper
    assert wrapper.get_base_url() == "http://ls.test:1234"
    assert wrapper.get_headers()["Authorization"] == "Token legacy-abc"
    assert isinstance(wrapper.httpx_client.httpx_client, httpx.Client)
    assert sdk.base_url(client) == "http://ls.test:1234"
    assert sdk.auth_headers(client) == {"Authorization": "Token legacy-abc"}


def test_a_personal_access_token_is_exchanged_once_for_a_bearer_token():
    fake = FakeLabelStudio()
    with fake.running():
        client = sdk.open_client(fake.url, fake.refresh)
        for _ in range(2):
            assert sdk.auth_headers(client) == {"Authorization": f"Bearer {fake.access}"}
        assert fake.refresh_calls == 1
        fake.files["/data/upload/1/x.bin"] = b"abc"
        response = sdk.http_get(client, "/data/upload/1/x.bin")
        assert response.status_code == 200 and response.content == b"abc"


def test_an_expired_personal_access_token_is_refused_when_the_client_is_made():
    expired = make_jwt("refresh", lifetime_s=-60)
    with pytest.raises(ApiError) as info:
        LabelStudio(base_url="http://ls.test:1234", api_key=expired)
    assert info.value.status_code == 401
    with pytest.raises(sdk.LabelStudioError, match="did not accept the API key"):
        sdk.open_client("http://ls.test:1234", expired)


def test_a_refused_refresh_is_a_clear_error():
    fake = FakeLabelStudio()
    with fake.running():
        client = sdk.open_client(fake.url, make_jwt("refresh", lifetime_s=1234))  # not the server's
        with pytest.raises(sdk.LabelStudioError, match="LABEL_STUDIO_API_KEY"):
            sdk.auth_headers(client)


def test_request_options_turn_the_sdk_retries_off():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(503, json={"detail": "busy"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = LabelStudio(base_url="http://ls.test", api_key="legacy", httpx_client=http)
    with pytest.raises(ApiError):
        client.projects.get(id=1, request_options=sdk.NO_SDK_RETRIES)
    assert len(calls) == 1


def test_with_retries_retries_transient_errors_then_gives_up():
    sleeps: list[float] = []
    policy = sdk.RetryPolicy(retries=2, backoff=0.5, sleep=sleeps.append)
    attempts = []

    def call():
        attempts.append(1)
        raise httpx.ConnectError("refused")

    with pytest.raises(sdk.LabelStudioUnavailable, match=r"stopped answering .*\(3 tries\)"):
        sdk.with_retries(call, "page 1", "http://ls.test", policy)
    assert len(attempts) == 3 and sleeps == [0.5, 1.0]


def test_with_retries_does_not_retry_a_refusal():
    policy = sdk.RetryPolicy(sleep=lambda s: pytest.fail("slept"))

    def call():
        raise ApiError(status_code=404, body={"detail": "Not found."})

    with pytest.raises(sdk.LabelStudioError, match=r"refused project 3 \(HTTP 404\): Not found"):
        sdk.with_retries(call, "project 3", "http://ls.test", policy)


def test_retry_defaults_are_the_settings():
    from robustar_ls.config import SyncConfig

    policy = sdk.RetryPolicy()
    assert (policy.retries, policy.backoff) == (SyncConfig().retries, SyncConfig().backoff)
