"""`robustar-ls influence` asks the project's ML backend to prefetch (issue 15, item 3)."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from robustar_ls.cli import command_parser
from robustar_ls.cli.serve import prefetch_config
from robustar_ls.workflows import prefetch_request
from robustar_ls.workflows.prefetch_request import request_prefetch


class Client:
    def __init__(self, backends) -> None:
        self.ml = SimpleNamespace(list=lambda project: backends)
        self._client_wrapper = SimpleNamespace(get_base_url=lambda: "http://ls.test")


def backend(title: str, url: str):
    return SimpleNamespace(title=title, url=url)


@pytest.fixture
def posts(monkeypatch):
    sent: list[dict] = []
    answers: list = []

    def post(url, json, auth, timeout):
        sent.append({"url": url, "json": json, "auth": auth})
        answer = answers.pop(0) if answers else httpx.Response(202, json={"status": "queued"})
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(prefetch_request.httpx, "post", post)
    return sent, answers


def test_the_projects_ml_backend_is_asked(posts):
    sent, _ = posts
    client = Client([backend("other", "http://x:1"), backend("robustar-ls", "http://be:9090/")])
    report = request_prefetch(client, 3, 100, basic_auth=("u", "p"))
    assert report == {
        "requested": True,
        "backend": "http://be:9090",
        "message": "the ML backend at http://be:9090 prefetches the top 100 tasks",
    }
    assert sent == [
        {"url": "http://be:9090/prefetch", "json": {"project": 3, "top": 100}, "auth": ("u", "p")}
    ]


def test_a_given_backend_url_wins(posts):
    sent, _ = posts
    report = request_prefetch(Client([]), 3, 5, backend_url="http://mine:9090")
    assert report["requested"] and sent[0]["url"] == "http://mine:9090/prefetch"


def test_no_backend_is_reported_not_raised(posts):
    report = request_prefetch(Client([]), 3, 100)
    assert not report["requested"] and "--backend-url" in report["message"]
    assert posts[0] == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.ConnectError("refused"), "cannot reach the ML backend at http://be:1"),
        (httpx.Response(501, json={"error": "prefetch is off"}), "answered 501: prefetch is off"),
        (httpx.Response(401, text="no"), "answered 401: no"),
    ],
)
def test_an_unhappy_backend_is_reported_not_raised(posts, answer, expected):
    posts[1].append(answer)
    report = request_prefetch(Client([backend("robustar-ls", "http://be:1")]), 3, 100)
    assert not report["requested"] and expected in report["message"]


def test_influence_and_serve_flags():
    influence = command_parser("influence")
    base = ["--data", "d", "--checkpoint", "c"]
    assert influence.parse_args(base).prefetch == 100
    assert influence.parse_args([*base, "--prefetch", "0"]).prefetch == 0
    args = influence.parse_args([*base, "--backend-url", "http://be:9090"])
    assert args.backend_url == "http://be:9090"
    serve = command_parser("serve")
    assert prefetch_config(serve.parse_args(["--checkpoint", "c"])).top == 100
    assert prefetch_config(serve.parse_args(["--checkpoint", "c", "--prefetch", "7"])).top == 7
    with pytest.raises(SystemExit):
        serve.parse_args(["--checkpoint", "c", "--prefetch", "-1"])
