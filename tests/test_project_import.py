"""Task building and the checks `robustar-ls import` makes before touching Label Studio."""

from __future__ import annotations

import json
import shutil

import pytest

from robustar_ls.cli import main
from robustar_ls.config import ImportConfig, LabelStudioConfig
from robustar_ls.data.folders import DatasetError, ImageFolderSplits
from robustar_ls.labelstudio.client import LabelStudioError
from robustar_ls.labelstudio.config import default_label_config
from robustar_ls.labelstudio.project_import import (
    build_tasks,
    import_project,
    read_label_config,
    task_data,
)


class NoCalls:
    """A client that fails the test on any use: the checks must come first."""

    def __getattr__(self, name):
        raise AssertionError(f"Label Studio was called ({name}) before the checks")


@pytest.fixture
def rooted(tiny_dataset, tmp_path):
    root = tmp_path / "docroot"
    shutil.copytree(tiny_dataset, root / "sets" / "tiny")
    return root, root / "sets" / "tiny"


def test_task_data_fields():
    data = task_data("cat/1.png", "cat", "/data/local-files/?d=x/cat/1.png", "http://b/s")
    assert data == {
        "image": "/data/local-files/?d=x/cat/1.png",
        "relpath": "cat/1.png",
        "split": "train",
        "true_class": "cat",
        "summary": "True class: cat (training image cat/1.png)",
        "saliency": "http://b/s",
        # model-dependent: no value before influence runs (an empty cell, not a made-up 0)
        "influence": None,
        "influence_rank": None,
        "influence_explains": "",
        "influence_line": "",
        "influence_version": None,
        "predicted": None,
        "confidence": None,
        "outcome": None,
        "top_training_tasks": None,
        "related_html": "",
    }
    # JSON null: Label Studio stores the key (the Data Manager lists the column) with no value
    assert '"influence": null' in json.dumps(data) and '"confidence": null' in json.dumps(data)
    assert task_data("cat/1.png", "cat", "u", split="test")["summary"].endswith(
        "(test image cat/1.png)"
    )


def test_build_tasks_one_per_image_of_every_split(rooted):
    root, data_dir = rooted
    data = ImageFolderSplits.open(data_dir)
    tasks = build_tasks(data, root, saliency=lambda url: "sal:" + url)
    expected = [
        (split, s.relpath) for split in ("train", "val", "test") for s in data.splits.get(split, [])
    ]
    assert {split for split, _ in expected} == {"train", "val", "test"}  # the fixture has all
    assert [(t["split"], t["relpath"]) for t in tasks] == expected
    train = data.splits["train"]
    first = tasks[0]
    assert first["image"] == f"/data/local-files/?d=sets/tiny/train/{train[0].relpath}"
    assert first["true_class"] == data.classes[train[0].label]
    assert first["saliency"] == "sal:" + first["image"]
    test = next(t for t in tasks if t["split"] == "test")
    assert test["image"].startswith("/data/local-files/?d=sets/tiny/test/")
    assert build_tasks(data, root)[0]["saliency"] == ""


def test_dataset_outside_document_root_fails_before_label_studio(rooted, tmp_path):
    root, data_dir = rooted
    other = tmp_path / "other"
    other.mkdir()
    ls_cfg = LabelStudioConfig(project="p1-test", document_root=str(other))
    with pytest.raises(LabelStudioError, match="not inside the document root"):
        import_project(NoCalls(), ls_cfg, ImportConfig(data=str(data_dir)))
    with pytest.raises(LabelStudioError, match="--document-root"):
        import_project(NoCalls(), LabelStudioConfig(), ImportConfig(data=str(data_dir)))


def test_dataset_without_images_fails_before_label_studio(tmp_path):
    (tmp_path / "root" / "ds" / "train" / "cat").mkdir(parents=True)
    ls_cfg = LabelStudioConfig(document_root=str(tmp_path / "root"))
    with pytest.raises(DatasetError, match="no images"):
        import_project(NoCalls(), ls_cfg, ImportConfig(data=str(tmp_path / "root" / "ds")))


def test_cli_import_errors_exit_2(rooted, tmp_path, capsys, monkeypatch):
    root, data_dir = rooted
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "some-token")
    common = ["import", "--data", str(data_dir), "--project", "p1-test", "-q"]
    assert (
        main([*common, "--label-studio-url", "http://127.0.0.1:9", "--document-root", str(root)])
        == 2
    )
    assert "cannot reach Label Studio at http://127.0.0.1:9" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # refused while parsing the command line
        main([*common, "--document-root", str(root), "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size" in capsys.readouterr().err
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    monkeypatch.delenv("LABEL_STUDIO_USER_TOKEN", raising=False)
    assert main([*common, "--document-root", str(root)]) == 2
    assert "LABEL_STUDIO_API_KEY" in capsys.readouterr().err


def test_read_label_config_checks_user_files(tmp_path):
    assert read_label_config("") == default_label_config()
    good = tmp_path / "good.xml"
    good.write_text(default_label_config())
    assert read_label_config(str(good)) == default_label_config()
    bad = tmp_path / "bad.xml"
    bad.write_text('<View><Image name="image" value="$image"/></View>')
    with pytest.raises(LabelStudioError, match="bad.xml"):
        read_label_config(str(bad))
    with pytest.raises(LabelStudioError, match="cannot read"):
        read_label_config(str(tmp_path / "missing.xml"))


def test_page_link_in_the_description_is_idempotent():
    from types import SimpleNamespace

    from robustar_ls.labelstudio.client.projects import (
        PAGE_LINK_PREFIX,
        description_with_page_link,
        ensure_page_link,
    )

    text = description_with_page_link("Our shapes.", "http://b:9090/")
    assert text == f"Our shapes.\n{PAGE_LINK_PREFIX}http://b:9090/"
    assert description_with_page_link(text, "http://b:9090/") == text
    moved = description_with_page_link(text, "http://c:9090/")
    assert moved == f"Our shapes.\n{PAGE_LINK_PREFIX}http://c:9090/"  # replaced, not added

    updates = []
    projects = SimpleNamespace(update=lambda pid, **kw: updates.append((pid, kw)))
    client = SimpleNamespace(projects=projects)
    project = SimpleNamespace(id=3, description=None)
    assert ensure_page_link(client, project, "http://b:9090/")
    assert updates == [(3, {"description": PAGE_LINK_PREFIX + "http://b:9090/"})]
    project.description = updates[0][1]["description"]
    assert not ensure_page_link(client, project, "http://b:9090/") and len(updates) == 1
