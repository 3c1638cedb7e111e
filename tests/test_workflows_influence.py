"""The influence workflow: summary and document of a result, write-back to a found project."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from robustar_ls.config import LabelStudioConfig
from robustar_ls.explain.influence import InfluenceResult
from robustar_ls.workflows import influence
from robustar_ls.workflows.project import ProjectNotFound, project_id

LS = LabelStudioConfig(url="http://ls.test:1", api_key="k", project="P")


@pytest.fixture
def result():
    return InfluenceResult(
        model_version="v1",
        scores={"a/0.png": 2.0, "b/1.png": 0.5, "a/2.png": -1.0},
        ranks={"a/0.png": 1, "b/1.png": 2, "a/2.png": 3},
        explains={"a/0.png": [{"test": "b/9.png", "true": "b", "predicted": "a", "value": 1.0}]},
        drives={"a/0.png": 1},
        test_errors=[{"test": "b/9.png", "true": "b", "predicted": "a", "confidence": 0.9}],
    )


def test_summary_lists_the_top_images_in_rank_order(result):
    summary = influence.summary(result, top=2)
    assert (summary["model_version"], summary["train_images"]) == ("v1", 3)
    assert summary["test_error_count"] == 1
    assert [item["relpath"] for item in summary["top"]] == ["a/0.png", "b/1.png"]
    assert summary["top"][0]["drives"] == 1 and summary["top"][1]["drives"] == 0


def test_document_is_written_atomically_as_json(result, tmp_path):
    out = tmp_path / "scores.json"
    influence.write_document(result, out)
    assert json.loads(out.read_text()) == influence.document(result)
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_missing_project_is_named(monkeypatch):
    monkeypatch.setattr("robustar_ls.labelstudio.client.find_project", lambda client, title: None)
    with pytest.raises(ProjectNotFound, match="no Label Studio project titled 'P' at http"):
        project_id(object(), LS)
    found = SimpleNamespace(id=7, title="P")
    monkeypatch.setattr("robustar_ls.labelstudio.client.find_project", lambda c, t: found)
    assert project_id(object(), LS) == 7


def test_write_back_goes_to_the_found_project(result, monkeypatch):
    monkeypatch.setattr(
        "robustar_ls.labelstudio.client.find_project", lambda c, t: SimpleNamespace(id=5)
    )
    seen = {}

    def fake_write(client, pid, res, top, progress, test_split):
        seen.update(pid=pid, result=res, top=top, test_split=test_split)
        return SimpleNamespace(
            scored=3,
            cleared=0,
            predicted=1,
            test_errors=1,
            updated=3,
            as_dict=lambda: {"scored": 3},
        )

    monkeypatch.setattr("robustar_ls.labelstudio.influence_fields.write_influence", fake_write)
    report = influence.write_to_label_studio(object(), LS, result, top=2, test_split="val")
    assert report == {"project_id": 5, "scored": 3}
    assert seen == {"pid": 5, "result": result, "top": 2, "test_split": "val"}
