"""Influence → Label Studio task fields (pure part; the HTTP part is covered in e2e)."""

from __future__ import annotations

from types import SimpleNamespace

from robustar_ls.explain.influence import InfluenceResult
from robustar_ls.labelstudio.influence_fields import (
    CLEARED,
    FIELDS,
    influence_updates,
    prediction_updates,
)
from robustar_ls.labelstudio.related import TaskLinks


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
            {"test": "b/9.png", "true": "b", "predicted": "a", "confidence": 0.9,
             "top_train": ["a/1.png", "a/3.png", "b/2.png"]},
            {"test": "b/8.png", "true": "b", "predicted": "a", "confidence": 0.8,
             "top_train": ["a/3.png"]},
        ],
        predictions={
            "b/9.png": {"true": "b", "predicted": "a", "confidence": 0.9},
            "b/8.png": {"true": "b", "predicted": "a", "confidence": 0.8},
            "a/7.png": {"true": "a", "predicted": "a", "confidence": 0.7},
        },
    )  # fmt: skip


def task(task_id: int, **data):
    return SimpleNamespace(id=task_id, data={"image": "x", **data})


def test_top_images_get_score_rank_and_explanation():
    tasks = {"a/1.png": task(10), "b/2.png": task(11), "a/3.png": task(12)}
    updates, report = influence_updates(result(), tasks)
    assert updates[10] == {
        "influence": 3.0,
        "influence_rank": 1,
        "influence_explains": "drives 2 errors, e.g. test/b/9.png: b → a; test/b/8.png: b → a",
        "influence_version": "v2-beef",  # the classifier version whose errors were scored
        # the test-only fields hold no value on a training task (no made-up 0)
        "predicted": None,
        "confidence": None,
        "outcome": None,
        "top_training_tasks": None,
    }
    assert updates[11]["influence_explains"] == "drives no test error"
    assert updates[12]["influence_rank"] == 3
    assert (report.scored, report.cleared, report.missing) == (3, 0, [])


def test_top_n_clears_old_scores_of_the_others_and_reports_missing_tasks():
    old = {"influence": 7.0, "influence_rank": 1, "influence_explains": "old"}
    tasks = {"a/1.png": task(10), "a/3.png": task(12, **old), "c/4.png": task(13, **CLEARED)}
    updates, report = influence_updates(result(), tasks, top=2)
    assert set(updates) == {10, 12, 13}
    cleared = {name: CLEARED[name] for name in FIELDS}
    assert updates[12].items() >= cleared.items() and updates[13].items() >= cleared.items()
    assert updates[12]["influence"] is None and updates[12]["influence_version"] is None
    assert report.scored == 1 and report.cleared == 1
    assert report.missing == ["b/2.png"]  # scored but without a task


def test_plain_dict_tasks_are_accepted():
    updates, _ = influence_updates(result(), {"a/1.png": {"id": 5, "data": {}}}, top=1)
    assert updates == {5: updates[5]} and updates[5]["influence_rank"] == 1


LINKS = TaskLinks(project_id=4, train_view=21, test_view=22)


def test_test_errors_get_their_top_training_tasks_as_linked_thumbnails():
    train = {
        "a/1.png": task(10, image="/data/local-files/?d=ds/train/a/1.png"),
        "a/3.png": task(12, image="/data/local-files/?d=ds/train/a/3.png"),
        "b/2.png": task(11, image="/data/local-files/?d=ds/train/b/2.png"),
    }
    old = {"outcome": "wrong", "top_training_tasks": [99], "related_html": "<a>old</a>"}
    test = {
        "b/9.png": task(30),
        "b/8.png": task(31),
        "a/7.png": task(32),
        "a/6.png": task(33, **old),  # no prediction this run: reset
    }
    updates, report = prediction_updates(result(), test, train, LINKS)
    error = updates[30]
    assert (error["predicted"], error["confidence"], error["outcome"]) == ("a", 0.9, "wrong")
    assert error["influence_line"] == "Predicted a (90%): WRONG"
    assert error["top_training_tasks"] == [10, 12, 11]  # most influential first
    html = error["related_html"]
    assert html.index("task=10") < html.index("task=12") < html.index("task=11")
    assert 'href="/projects/4/data?tab=21&amp;task=10"' in html
    assert 'src="/data/local-files/?d=ds/train/a/1.png"' in html
    assert "#1 a/1.png" in html  # the training image's influence rank
    assert updates[31]["top_training_tasks"] == [12]
    assert updates[32] == {
        "predicted": "a",
        "confidence": 0.7,
        "outcome": "correct",
        "influence_line": "Predicted a (70%): correct",
        "influence_version": "v2-beef",
        "top_training_tasks": None,
        "related_html": "",
        # the training-only fields hold no value on a test task
        "influence": None,
        "influence_rank": None,
        "influence_explains": "",
    }
    assert updates[33]["outcome"] is None and updates[33]["top_training_tasks"] is None
    assert updates[33]["influence_version"] is None
    assert (report.predicted, report.test_errors, report.cleared) == (3, 2, 1)
    assert report.error_tasks == [30, 31]  # the surest error first


def test_training_tasks_link_to_the_test_errors_they_drive():
    train = {"a/1.png": task(10), "b/2.png": task(11), "a/3.png": task(12)}
    test = {"b/9.png": task(30, image="/t/9.png"), "b/8.png": task(31, image="/t/8.png")}
    updates, _ = influence_updates(result(), train, links=LINKS, test_tasks=test)
    html = updates[10]["related_html"]
    assert 'href="/projects/4/data?tab=22&amp;task=30"' in html and "task=31" in html
    assert 'src="/t/9.png"' in html and "b → a" in html
    assert updates[11]["related_html"] == ""  # drives no error
    assert updates[10]["influence_line"] == "Influence 3 · rank 1 of 3 training images"


def test_captions_are_escaped():
    train = {"a/1.png": task(10, image='"><script>x</script>')}
    updates, _ = prediction_updates(result(), {"b/9.png": task(30)}, train, LINKS)
    assert "<script>" not in updates[30]["related_html"]


def test_placeholders_of_older_imports_do_not_count_as_values_to_clear():
    """Imports before this version wrote 0 and [] where nothing applied: clearing them is no
    'old value removed'; writing None is what replaces them."""
    old_import = {"influence": 0.0, "influence_rank": 0, "confidence": 0.0, "outcome": "",
                  "top_training_tasks": []}  # fmt: skip
    tasks = {"a/1.png": task(10), "c/4.png": task(13, **old_import)}
    updates, report = influence_updates(result(), tasks, top=1)
    assert report.cleared == 0
    assert updates[13]["influence"] is None and updates[13]["confidence"] is None
