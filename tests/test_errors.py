"""Every user-facing error derives from the one root, and keeps its old base for callers."""

from __future__ import annotations

import pytest

from robustar_ls.config import ConfigError
from robustar_ls.data.folders import DatasetError
from robustar_ls.data.images import ImageLoadError
from robustar_ls.errors import RobustarError
from robustar_ls.explain.feature_cache import FeatureCacheError
from robustar_ls.explain.influence import InfluenceError
from robustar_ls.explain.projection import ProjectionError
from robustar_ls.models.checkpoint import CheckpointError
from robustar_ls.models.zoo import UnknownArchError
from robustar_ls.train.fills import FillError
from robustar_ls.workflows.demo import DemoError
from robustar_ls.workflows.label_studio import LabelStudioStartError
from robustar_ls.workflows.project import ProjectNotFound
from robustar_ls.workflows.sync_train import NoMasksError, SyncRankError

ROOTED = [
    (ConfigError, ValueError),
    (DatasetError, ValueError),
    (ImageLoadError, ValueError),
    (FeatureCacheError, RuntimeError),
    (InfluenceError, ValueError),
    (ProjectionError, ValueError),
    (CheckpointError, ValueError),
    (UnknownArchError, ValueError),
    (FillError, ValueError),
    (DemoError, RuntimeError),
    (LabelStudioStartError, RuntimeError),
    (ProjectNotFound, LookupError),
    (NoMasksError, RuntimeError),
    (SyncRankError, RuntimeError),
]


@pytest.mark.parametrize(("error", "old_base"), ROOTED, ids=lambda e: e.__name__)
def test_user_errors_derive_from_the_root(error, old_base):
    assert issubclass(error, RobustarError) and issubclass(error, old_base)
    assert error("x").exit_code == 2
