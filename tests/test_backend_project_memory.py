"""The Label Studio project the backend serves, noted from Label Studio's own requests by the
app's views (not by the page): every worker and the prefetch read it back."""

from __future__ import annotations

import logging

from backend_support import make_backend, task

from robustar_ls.backend.project_memory import PROJECT_FILE, ProjectMemory, project_id_of


def test_project_ids_in_label_studio_requests():
    assert project_id_of("12.1700000000") == 12
    assert project_id_of({"id": 3, "title": "x"}) == 3
    assert project_id_of(5) == 5
    assert project_id_of(None) is None and project_id_of("abc") is None
    assert project_id_of(True) is None


def test_a_new_id_is_written_once_and_shared(tmp_path):
    memory = ProjectMemory(tmp_path)
    assert memory.read() is None
    assert memory.note("4.1700000000") == 4
    written = (tmp_path / PROJECT_FILE).stat().st_mtime_ns
    assert memory.note({"id": 4}) == 4  # the same id: no write
    assert (tmp_path / PROJECT_FILE).stat().st_mtime_ns == written
    assert ProjectMemory(tmp_path).read() == 4  # another worker reads it
    assert memory.note(None) is None and memory.read() == 4


def test_a_failed_write_is_logged_not_raised(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    memory = ProjectMemory(tmp_path / "file")  # its folder is a file
    with caplog.at_level(logging.WARNING):
        assert memory.note(3) == 3
    assert "cannot remember Label Studio project 3" in caplog.text
    assert memory.read() is None


def test_setup_predict_and_webhook_note_their_project(tmp_path):
    backend = make_backend(tmp_path, segmenter=False)
    memory = backend.app.extensions["robustar_ls"].project
    backend.client.post("/setup", json={"project": "7.1700000000", "schema": ""})
    assert memory.read() == 7
    backend.client.post("/predict", json={"tasks": [task("ds/train/circle/c0.png")],
                                          "project": "8.1700000000"})  # fmt: skip
    assert memory.read() == 8
    backend.client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 9}})
    assert memory.read() == 9


def test_the_page_only_renders(tmp_path):
    backend = make_backend(tmp_path, segmenter=False)
    cache = backend.cfg.resolved_cache_dir()
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    assert backend.client.get("/").status_code == 200
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before
    assert not (cache / PROJECT_FILE).exists()
