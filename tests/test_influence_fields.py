"""Influence → Label Studio task fields (pure part; the HTTP part is covered in e2e)."""

from __future__ import annotations

from types import SimpleNamespace

from robustar_ls.explain.influence import InfluenceResult
from robustar_ls.labelstudio.influence_fields import CLEARED, influence_updates


def result() -> InfluenceResult:
    scores = {"a/1.png": 3.0, "b/2.png": 1.5, "a/3.png": -0.5}
    return InfluenceResult(
        model_version="v2-beef",
        scores=scores,
        ranks={"a/1.png": 1, "b/2.png": 2, "a/3.png": 3},
        explains={
            "a/1.png": [
                {"test": "b/9.png", "true": "b", "predicted": "a", "value": 2.0},
                {"test": "b/8.png", "true": "b", "predicted": "a", "value": 1.0},
            ],
            "b/2.png": [],
        },
        drives={"a/1.png": 2, "b/2.png": 0},
        test_errors=[
            {"test": "b/9.png", "true": "b", "predicted": "a", "confidence": 0.9},
            {"test": "b/8.png", "true": "b", "predicted": "a", "confidence": 0.8},
        ],
    )


def task(task_id: int, **data):
    return SimpleNamespace(id=task_id, data={"image": "x", **data})


def test_top_images_get_score_rank_and_explanation():
    tasks = {"a/1.png": task(10), "b/2.png": task(11), "a/3.png": task(12)}
    updates, report = influence_updates(result(), tasks)
    assert updates[10] == {
        "influence": 3.0,
        "influence_rank": 1,
        "influence_explains": "drives 2 errors, e.g. test/b/9.png: b → a; test/b/8.png: b → a",
    }
    assert updates[11]["influence_explains"] == "drives no test error"
    assert updates[12]["influence_rank"] == 3
    assert (report.scored, report.cleared, report.missing) == (3, 0, [])


def test_top_n_clears_old_scores_of_the_others_and_reports_missing_tasks():
    old = {"influence": 7.0, "influence_rank": 1, "influence_explains": "old"}
    tasks = {"a/1.png": task(10), "a/3.png": task(12, **old), "c/4.png": task(13, **CLEARED)}
    updates, report = influence_updates(result(), tasks, top=2)
    assert set(updates) == {10, 12, 13}
    assert updates[12] == CLEARED and updates[13] == CLEARED
    assert report.scored == 1 and report.cleared == 1
    assert report.missing == ["b/2.png"]  # scored but without a task


def test_plain_dict_tasks_are_accepted():
    updates, _ = influence_updates(result(), {"a/1.png": {"id": 5, "data": {}}}, top=1)
    assert updates == {5: updates[5]} and updates[5]["influence_rank"] == 1
