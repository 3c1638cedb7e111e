"""A thin, typed layer over label-studio-sdk 2.1's ``LabelStudio`` client.

Every function is idempotent where that makes sense (``ensure_*`` find what exists and repair it,
``import_tasks`` skips images that already have a task), so a rerun after a failure converges.
Errors from Label Studio are turned into :class:`LabelStudioError` with a message that says what
to fix; nothing here prints or shows progress bars (pass ``progress`` from the CLI).

One module per job: :mod:`.sdk` (connection, auth, errors, retries: the only code touching the
SDK's private parts), :mod:`.projects` (project, ML backend), :mod:`.views` (the Data Manager tabs),
:mod:`.storage` (local-files storage and URLs), :mod:`.tasks` (task listing, import, updates,
the sync's paged reads), :mod:`.predictions` (stored prediction versions, bulk writes).
Everything is importable from here. Verified against Label Studio
1.23.2.
"""

from __future__ import annotations

from robustar_ls.labelstudio.client.predictions import (
    StoredTask,
    most_influential_tasks,
    store_predictions,
    tasks_with_versions,
    test_error_tasks,
    versions_of,
)
from robustar_ls.labelstudio.client.projects import (
    ML_BACKEND_TITLE,
    ensure_ml_backend,
    ensure_page_link,
    ensure_project,
    find_project,
    ml_backend_url,
)
from robustar_ls.labelstudio.client.sdk import (
    KEY_REFUSED,
    NO_SDK_RETRIES,
    LabelStudioError,
    LabelStudioUnavailable,
    RetryPolicy,
    auth_headers,
    base_url,
    connect,
    errors,
    http_get,
    is_transient,
    open_client,
    with_retries,
)
from robustar_ls.labelstudio.client.storage import (
    LOCAL_FILES_PREFIX,
    STORAGE_NEVER_MATCH,
    STORAGE_TITLE,
    check_image_url,
    create_local_storage,
    ensure_local_storage,
    local_files_url,
    relative_to_document_root,
)
from robustar_ls.labelstudio.client.tasks import (
    ImportResult,
    Progress,
    UpdateResult,
    as_dict,
    fetch_annotated_tasks,
    fetch_tasks,
    import_tasks,
    project_label_config,
    project_task_count,
    split_of,
    tasks_by_image,
    tasks_by_split,
    update_task_data,
)
from robustar_ls.labelstudio.client.views import (
    ANNOTATED_VIEW_TITLE,
    INFLUENCE_VIEW_TITLE,
    TEST_ERRORS_VIEW_TITLE,
    TEST_VIEW_TITLE,
    VIEWS,
    ensure_influence_view,
    ensure_views,
    influence_view_data,
)

__all__ = [
    "ANNOTATED_VIEW_TITLE",
    "TEST_ERRORS_VIEW_TITLE",
    "TEST_VIEW_TITLE",
    "VIEWS",
    "ensure_views",
    "INFLUENCE_VIEW_TITLE",
    "KEY_REFUSED",
    "LOCAL_FILES_PREFIX",
    "ML_BACKEND_TITLE",
    "NO_SDK_RETRIES",
    "STORAGE_NEVER_MATCH",
    "STORAGE_TITLE",
    "ImportResult",
    "LabelStudioError",
    "LabelStudioUnavailable",
    "Progress",
    "RetryPolicy",
    "UpdateResult",
    "as_dict",
    "auth_headers",
    "base_url",
    "check_image_url",
    "connect",
    "create_local_storage",
    "ensure_influence_view",
    "ensure_local_storage",
    "ensure_ml_backend",
    "ensure_page_link",
    "ensure_project",
    "errors",
    "fetch_annotated_tasks",
    "fetch_tasks",
    "find_project",
    "ml_backend_url",
    "most_influential_tasks",
    "test_error_tasks",
    "store_predictions",
    "tasks_with_versions",
    "versions_of",
    "StoredTask",
    "http_get",
    "import_tasks",
    "influence_view_data",
    "is_transient",
    "local_files_url",
    "open_client",
    "project_label_config",
    "project_task_count",
    "relative_to_document_root",
    "split_of",
    "tasks_by_image",
    "tasks_by_split",
    "update_task_data",
    "with_retries",
]
