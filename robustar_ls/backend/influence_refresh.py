"""Influence for every new model version, rerun by the backend itself (``serve --data``).

After Start Training, ``sync-train`` or a checkpoint replaced by hand, the ranks, test-error
fields and links in Label Studio describe the old model until influence runs again. The
prefetch worker (:mod:`robustar_ls.backend.prefetch`, one per backend) calls
:meth:`InfluenceRefresh.ensure` before it prefetches: when the project's tasks do not yet carry
``data.influence_version`` = the served classifier's version, it scores the training images
against that version's test errors (:mod:`robustar_ls.workflows.influence`, the same code and
feature cache as ``robustar-ls influence``) and writes the fields into the tasks. The served
model is copied first: ``/predict`` keeps using the original while the copy's gradients are
taken. ``progress`` records land in the prefetch status (``/health``, the task-centre page);
``cancelled()`` returning True (a newer model version) stops the run between two steps.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from robustar_ls.config import InfluenceConfig
from robustar_ls.errors import RobustarError
from robustar_ls.labelstudio import client as ls

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]


class Cancelled(RobustarError):  # noqa: N818  (control flow, like prefetch.Superseded)
    """A newer model version arrived while influence ran."""


@dataclass(frozen=True)
class RefreshRun:
    """One refresh's inputs: the project, the served checkpoint and the callbacks."""

    client: Any
    project: int
    checkpoint: Any  # robustar_ls.models.checkpoint.Checkpoint of the served model
    report: Report  # receives {"state", "model_version", "phase", "done", "total", ...}
    cancelled: Callable[[], bool]


class InfluenceRefresh:
    """Reruns influence for each new classifier version of ``data`` (a dataset folder)."""

    def __init__(self, data: str | Path, cfg: InfluenceConfig | None = None) -> None:
        self.data = Path(data)
        self.cfg = cfg or InfluenceConfig()
        self._written: str | None = None  # the classifier version last written (or found)

    def due(self, client: Any, project: int, version: str) -> bool:
        """Whether the project's fields come from another classifier version than ``version``:
        the top-ranked task's ``influence_version`` says (``robustar-ls influence`` may have
        written this version's already)."""
        if self._written == version:
            return False
        top = ls.most_influential_tasks(client, project, 1)
        if top and top[0].data.get("influence_version") == version:
            self._written = version
            return False
        return True

    def ensure(self, run: RefreshRun) -> dict[str, Any]:
        """Score and write unless the project is up to date; what was done (for the status)."""
        version = run.checkpoint.version
        if not self.due(run.client, run.project, version):
            return {"state": "current", "model_version": version}
        run.report({"state": "running", "model_version": version, "phase": "start"})
        written = self._score_and_write(run)
        self._written = version
        return {"state": "done", "model_version": version, **written}

    def _score_and_write(self, run: RefreshRun) -> dict[str, Any]:
        from robustar_ls.data.folders import ImageFolderSplits
        from robustar_ls.labelstudio.influence_fields import write_influence
        from robustar_ls.workflows import influence

        cfg = self.cfg
        data = ImageFolderSplits.open(self.data, required=("train", cfg.test_split))
        checkpoint = replace(run.checkpoint, model=copy.deepcopy(run.checkpoint.model))
        progress = _Progress(run)
        result = influence.score(data, checkpoint, cfg, progress=progress)
        if result is None:
            raise RobustarError("influence returned no scores")
        if cfg.balance_classes:
            result = influence.take_class_turns(result)
        written = write_influence(
            run.client, run.project, result, progress=progress, test_split=cfg.test_split
        )
        log.info(
            "influence of model version %s written into project %s: %d training tasks "
            "scored, %d test errors",
            result.model_version, run.project, written.scored, written.test_errors,
        )  # fmt: skip
        return {"test_errors": written.test_errors, "scored": written.scored}


class _Progress:
    """A tqdm-like wrapper: reports each step of each phase and stops when cancelled."""

    def __init__(self, run: RefreshRun) -> None:
        self.run = run

    def __call__(self, iterable: Iterable, **kwargs: Any) -> Iterator:
        total = kwargs.get("total")
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        phase = str(kwargs.get("desc") or "influence")
        version = self.run.checkpoint.version
        for done, item in enumerate(iterable):
            if self.run.cancelled():
                raise Cancelled()
            self.run.report({"state": "running", "model_version": version, "phase": phase,
                             "done": done, "total": total})  # fmt: skip
            yield item
