"""The Label Studio fixture works, and the real server accepts our labeling config."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
import requests
from label_studio_sdk.core.api_error import ApiError
from PIL import Image

from robustar_ls.labelstudio.client import create_local_storage
from robustar_ls.labelstudio.config import default_label_config
from robustar_ls.workflows.label_studio import LabelStudioServer

from .listing import listed_projects, listed_tasks

pytestmark = pytest.mark.e2e

BROKEN_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="spurious" toName="no_such_image"><Label value="Spurious"/></BrushLabels>
</View>
"""


def _title(prefix: str) -> str:
    """A project title no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _png_bytes(size: tuple[int, int] = (12, 8)) -> bytes:
    """A small RGB PNG made on the spot."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_server_is_label_studio_1_23(label_studio: LabelStudioServer) -> None:
    response = requests.get(f"{label_studio.url}/api/version", timeout=30)
    response.raise_for_status()
    assert response.json()["release"].startswith("1.23.")


def test_pat_is_a_jwt_distinct_from_legacy_token(label_studio: LabelStudioServer) -> None:
    assert label_studio.pat != label_studio.legacy_token
    assert label_studio.pat.count(".") == 2  # header.payload.signature


@pytest.mark.parametrize("kind", ["legacy", "pat"])
def test_client_creates_and_lists_project_with_default_config(
    label_studio: LabelStudioServer, kind: str
) -> None:
    client = label_studio.client(kind)
    assert client.users.whoami().email == label_studio.username
    title = _title(f"default-config-{kind}")
    project = client.projects.create(title=title, label_config=default_label_config())
    assert project.id is not None
    assert title in {p.title for p in listed_projects(client)}
    stored = client.projects.get(id=project.id)
    assert "BrushLabels" in stored.label_config


def test_server_rejects_broken_config(label_studio: LabelStudioServer) -> None:
    with pytest.raises(ApiError) as excinfo:
        label_studio.client().projects.create(title=_title("broken"), label_config=BROKEN_CONFIG)
    assert excinfo.value.status_code == 400
    assert "no_such_image" in str(excinfo.value.body)


def test_import_requires_the_object_tag_keys(label_studio: LabelStudioServer) -> None:
    """Named object tags make their data keys mandatory; the Header fields stay optional."""
    client = label_studio.client()
    project = client.projects.create(title=_title("keys"), label_config=default_label_config())
    with pytest.raises(ApiError) as excinfo:
        client.projects.import_tasks(id=project.id, request=[{"image": "/a.png"}])
    assert excinfo.value.status_code == 400
    assert "saliency" in str(excinfo.value.body) or "related_html" in str(excinfo.value.body)
    with pytest.raises(ApiError) as excinfo:
        client.projects.import_tasks(id=project.id, request=[{"image": "/a.png", "saliency": ""}])
    assert "related_html" in str(excinfo.value.body)
    result = client.projects.import_tasks(
        id=project.id, request=[{"image": "/a.png", "saliency": "/b.png", "related_html": ""}]
    )
    assert result.task_count == 1


def test_local_files_served_once_storage_exists(
    label_studio: LabelStudioServer, local_files_dir: Path
) -> None:
    png = _png_bytes()
    image_path = local_files_dir / "train" / "cat" / "img 0.png"
    image_path.parent.mkdir(parents=True)
    image_path.write_bytes(png)
    url = label_studio.local_files_url(image_path)
    headers = label_studio.auth_headers()
    assert requests.get(label_studio.url + url, headers=headers, timeout=30).status_code == 404

    client = label_studio.client()
    project = client.projects.create(title=_title("local"), label_config=default_label_config())
    storage = create_local_storage(
        client,
        project.id,
        local_files_dir.resolve(),
        title=f"local files {local_files_dir.name}",
        use_blob_urls=False,
    )
    storage_id = int(storage.id)
    assert client.import_storage.local.get(id=storage_id).project == project.id

    imported = client.projects.import_tasks(
        id=project.id,
        request=[
            {
                "image": url,
                "saliency": url,
                "related_html": "",
                "summary": "true: cat",
                "influence": 0.5,
            }
        ],
        return_task_ids=True,
    )
    assert imported.task_count == 1
    (task,) = listed_tasks(client, project=project.id)
    assert task.id == imported.task_ids[0]
    assert task.data["image"] == url

    response = requests.get(label_studio.url + task.data["image"], headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.content == png
    assert requests.get(label_studio.url + url, timeout=30).status_code == 401
