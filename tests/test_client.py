"""The Label Studio client layer without a server: paths, URLs, batching, merging, errors.

The same functions against a real Label Studio are tested in tests/e2e/test_import.py.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.client import storage


def test_relative_to_document_root_and_url(tmp_path):
    image = tmp_path / "root" / "my data" / "train" / "cat" / "a b#1.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"")
    assert ls.relative_to_document_root(image, tmp_path / "root") == "my data/train/cat/a b#1.png"
    url = ls.local_files_url(image, tmp_path / "root")
    assert url == "/data/local-files/?d=my%20data/train/cat/a%20b%231.png"


def test_data_outside_document_root_is_a_clear_error(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ls.LabelStudioError, match="not inside the document root"):
        ls.local_files_url(tmp_path / "elsewhere" / "x.png", tmp_path / "root")
    with pytest.raises(ls.LabelStudioError, match="sub-folder"):
        storage._storage_path(tmp_path / "root", tmp_path / "root")


def test_storage_path_keeps_the_document_root_as_given(tmp_path):
    real = tmp_path / "real"
    (real / "ds").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    # the server compares strings under its own document root spelling, here the link
    assert storage._storage_path(real / "ds", link) == str(link / "ds")
    assert storage._covers(str(link), str(link / "ds")) and not storage._covers(
        str(link / "d"), str(link)
    )
    assert not storage._covers(str(tmp_path / "ds"), str(tmp_path / "ds-private"))


def test_influence_view_is_numeric_and_descending():
    data = ls.influence_view_data()
    assert data["title"] == ls.INFLUENCE_VIEW_TITLE
    assert data["ordering"] == ["-tasks:data.influence"]
    assert data["columnsDisplayType"]["tasks:data.influence"] == "Number"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_unreachable_and_missing_key():
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ls.LabelStudioError, match=r"cannot reach Label Studio at .*is it running"):
        ls.connect(url, "some-token")
    with pytest.raises(ls.LabelStudioError, match="LABEL_STUDIO_API_KEY"):
        ls.connect(url, "")
    with pytest.raises(ls.LabelStudioError, match="http://"):
        ls.connect("localhost:8080", "some-token")


class FakeClient:
    """Just enough of LabelStudio for import_tasks / update_task_data / tasks_by_image."""

    def __init__(self, tasks=()):
        self.tasks_store = {i + 1: dict(d) for i, d in enumerate(tasks)}
        self.import_calls: list[int] = []
        self.patched: list[int] = []
        self.pages: list[int] = []
        self.projects = SimpleNamespace(import_tasks=self._import)
        self.tasks = SimpleNamespace(list=self._list, update=self._update)

    def _import(self, project_id, request, **kwargs):
        self.import_calls.append(len(request))
        ids = []
        for data in request:
            task_id = len(self.tasks_store) + 1
            self.tasks_store[task_id] = dict(data)
            ids.append(task_id)
        return SimpleNamespace(task_ids=ids)

    def _list(self, project, page=1, page_size=100, **kwargs):
        """One page, as Label Studio answers it: a page past the end is a 404 there."""
        self.pages.append(page)
        rows = [SimpleNamespace(id=i, data=dict(d)) for i, d in self.tasks_store.items()]
        if page > 1 and (page - 1) * page_size >= len(rows):
            raise AssertionError(f"page {page} is past the last page: Label Studio logs a 404")
        items = rows[(page - 1) * page_size : page * page_size]
        return SimpleNamespace(items=items, response=SimpleNamespace(total=len(rows)))

    def _update(self, task_id, data, project):
        self.patched.append(int(task_id))
        self.tasks_store[int(task_id)] = dict(data)


def _tasks(n):
    return [{"relpath": f"c/{i:03d}.png", "image": f"/x/{i}", "influence": 0.0} for i in range(n)]


def test_import_tasks_batches_and_skips_existing():
    client = FakeClient(_tasks(3))
    result = ls.import_tasks(client, 1, _tasks(10) + _tasks(2), batch_size=4)
    assert client.import_calls == [4, 3]
    assert (result.created, result.existing) == (7, 5)
    assert len(result.task_ids) == 7
    relpaths = [d["relpath"] for d in client.tasks_store.values()]
    assert sorted(relpaths) == sorted({t["relpath"] for t in _tasks(10)})
    again = ls.import_tasks(client, 1, _tasks(10), batch_size=4)
    assert (again.created, again.existing) == (0, 10) and client.import_calls == [4, 3]


def test_import_tasks_rejects_task_without_relpath_and_bad_batch():
    with pytest.raises(ValueError, match="relpath"):
        ls.import_tasks(FakeClient(), 1, [{"image": "x"}])
    with pytest.raises(ValueError, match="batch size"):
        ls.import_tasks(FakeClient(), 1, _tasks(2), batch_size=0)


def test_tasks_by_image_lowest_id_wins():
    client = FakeClient([*_tasks(2), _tasks(1)[0], {"image": "no relpath"}])
    found = ls.tasks_by_image(client, 1)
    assert sorted(found) == ["c/000.png", "c/001.png"]
    assert found["c/000.png"].id == 1


def test_update_task_data_merges_and_skips_unchanged():
    client = FakeClient(_tasks(4))
    result = ls.update_task_data(
        client, 1, {1: {"influence": 2.5}, 2: {"influence": 0.0}, 3: {"influence_rank": 1}}
    )
    assert (result.updated, result.unchanged) == (2, 1)
    assert sorted(client.patched) == [1, 3]
    assert client.tasks_store[1] == {**_tasks(1)[0], "influence": 2.5}
    assert client.tasks_store[3] == {**_tasks(3)[2], "influence_rank": 1}
    with pytest.raises(ls.LabelStudioError, match="not in project"):
        ls.update_task_data(client, 1, {99: {"influence": 1.0}})
    assert sorted(client.patched) == [1, 3]


def test_the_same_relpath_in_two_splits_is_two_images():
    train = _tasks(2)
    test = [{**t, "split": "test", "image": t["image"] + "-test"} for t in _tasks(2)]
    client = FakeClient(train)
    result = ls.import_tasks(client, 1, train + test)
    assert (result.created, result.existing) == (2, 2)
    by_split = ls.tasks_by_split(client, 1)
    assert {split: sorted(tasks) for split, tasks in by_split.items()} == {
        "train": ["c/000.png", "c/001.png"],
        "test": ["c/000.png", "c/001.png"],
    }
    assert by_split["test"]["c/000.png"].id == 3
    assert (
        ls.tasks_by_image(client, 1) is not None
        and ls.tasks_by_image(client, 1)["c/000.png"].id == 1
    )
    assert ls.import_tasks(client, 1, train + test).created == 0


def test_views_filter_by_split_and_hide_default_columns():
    views = {spec.title: spec.data() for spec in ls.VIEWS}
    assert list(views) == [
        ls.INFLUENCE_VIEW_TITLE,
        ls.TEST_ERRORS_VIEW_TITLE,
        ls.ANNOTATED_VIEW_TITLE,
        ls.TEST_VIEW_TITLE,
    ]
    errors = views[ls.TEST_ERRORS_VIEW_TITLE]
    assert errors["ordering"] == ["-tasks:data.confidence"]
    assert {(f["filter"], f["value"]) for f in errors["filters"]["items"]} == {
        ("filter:tasks:data.split", "test"),
        ("filter:tasks:data.outcome", "wrong"),
    }
    train = views[ls.INFLUENCE_VIEW_TITLE]["filters"]["items"]
    assert [(f["filter"], f["value"]) for f in train] == [("filter:tasks:data.split", "train")]
    for data in views.values():
        hidden = data["hiddenColumns"]
        assert hidden["explore"] == hidden["labeling"]
        assert (
            "tasks:inner_id" in hidden["explore"] and "tasks:data.related_html" in hidden["explore"]
        )
        for shown in ("image", "true_class", "predicted", "confidence", "outcome", "influence"):
            assert f"tasks:data.{shown}" not in hidden["explore"]
        assert data["columnsDisplayType"]["tasks:data.confidence"] == "Number"


class FakeViews:
    def __init__(self):
        self.store, self.calls = {}, []

    def list(self, project):
        return list(self.store.values())

    def create(self, project, data):
        self.calls.append("create")
        view = SimpleNamespace(id=len(self.store) + 1, data=data)
        self.store[view.id] = view
        return view

    def update(self, view_id, project, data):
        self.calls.append("update")
        self.store[int(view_id)] = SimpleNamespace(id=int(view_id), data=data)
        return self.store[int(view_id)]


def test_ensure_views_creates_then_repairs_then_leaves_alone():
    client = SimpleNamespace(views=FakeViews())
    first = ls.ensure_views(client, 1)
    assert client.views.calls == ["create"] * 4 and len(first) == 4
    client.views.store[2].data = {**client.views.store[2].data, "ordering": ["tasks:id"]}
    ls.ensure_views(client, 1)
    assert client.views.calls == ["create"] * 4 + ["update"]
    assert client.views.store[2].data["ordering"] == ["-tasks:data.confidence"]
    ls.ensure_views(client, 1)
    assert client.views.calls == ["create"] * 4 + ["update"]


@pytest.mark.parametrize(("n", "pages"), [(0, [1]), (3, [1, 2]), (4, [1, 2]), (5, [1, 2, 3])])
def test_listing_tasks_stops_at_the_last_page(n, pages):
    client = FakeClient(_tasks(n))
    found = ls.tasks_by_split(client, 1, page_size=2)
    assert sorted(found.get("train", {})) == sorted(t["relpath"] for t in _tasks(n))
    assert client.pages == pages  # never one past the end (Label Studio's "Invalid page")


def _projects_client(titles: list[str], page_size_seen: list[int]):
    """A client whose projects.list pages like Label Studio's (``count``; 404 past the end)."""

    def list_(title, page, page_size):
        page_size_seen.append(page)
        rows = [SimpleNamespace(id=i + 1, title=t) for i, t in enumerate(titles) if title in t]
        if page > 1 and (page - 1) * page_size >= len(rows):
            raise AssertionError(f"page {page} is past the last page: Label Studio logs a 404")
        items = rows[(page - 1) * page_size : page * page_size]
        return SimpleNamespace(items=items, response=SimpleNamespace(count=len(rows)))

    get = lambda project_id: SimpleNamespace(id=project_id, title=titles[project_id - 1])  # noqa: E731
    return SimpleNamespace(projects=SimpleNamespace(list=list_, get=get))


def test_find_project_reads_only_the_pages_there_are(monkeypatch):
    from robustar_ls.labelstudio.client import projects

    monkeypatch.setattr(projects, "PAGE_SIZE", 2)
    pages: list[int] = []
    titles = ["shapes copy", "shapes", "digits", "shapes 2", "shapes 3"]
    found = projects.find_project(_projects_client(titles, pages), "shapes")
    assert (found.id, found.title) == (2, "shapes") and pages == [1, 2]  # 4 matches, 2 pages
    pages.clear()
    assert projects.find_project(_projects_client(titles, pages), "none") is None
    assert pages == [1]


def test_every_item_without_a_total_stops_at_a_short_page():
    from robustar_ls.labelstudio.client.sdk import every_item

    rows = list(range(5))
    calls: list[int] = []

    def page(number):
        calls.append(number)
        return SimpleNamespace(items=rows[(number - 1) * 2 : number * 2], response=None)

    assert list(every_item(page, 2)) == rows and calls == [1, 2, 3]
