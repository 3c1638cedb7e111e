"""Sync masks from Label Studio, then paired training: the job behind ``robustar-ls sync-train``
and behind Label Studio's "Start Training" button (``/webhook`` → :class:`TrainingJobs`).

:func:`sync_and_train` runs: connect → find the project → :func:`sync_masks` into the mask store
(``<data>/masks`` unless told otherwise) → :func:`paired_finetune` from the served checkpoint →
a summary with the sync report. Without Label Studio settings it trains from the masks already in
the store (e.g. ``<data>/oracle_masks``). The dataset folder is opened once, here, and the
opened :class:`ImageFolderSplits` is handed to the sync and to the training.

Syncs into one mask store are serialised by an ``flock`` on ``<masks>/.sync.lock``: a CLI run and
a webhook job never interleave their writes. A dry run takes no lock (it writes nothing, not even
the lock file). Under ``torchrun`` only rank 0 syncs; the other ranks wait for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustar_ls.config import LabelStudioConfig, PairedConfig, SyncConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore
from robustar_ls.errors import RobustarError
from robustar_ls.files import exclusive_lock
from robustar_ls.train.progress import OnProgress, progress_record
from robustar_ls.train.recipe import Recipe, choose

if TYPE_CHECKING:  # imported where used: a dry run (sync only) must not load torch
    from robustar_ls.workflows.segmenter_step import SegmenterStep

log = logging.getLogger(__name__)

LOCK_FILE = ".sync.lock"


class NoMasksError(RobustarError, RuntimeError):
    """After syncing, no training image has a mask: nothing to pair."""


class SyncRankError(RobustarError, RuntimeError):
    """Under torchrun: rank 0's sync or segmenter step failed (this rank waited for it)."""


def mask_store_lock(masks_root: Path) -> AbstractContextManager[None]:
    """Exclusive lock on one mask store, across threads and processes (waits for it)."""
    return exclusive_lock(Path(masks_root) / LOCK_FILE)


def open_data(data: str | Path | ImageFolderSplits) -> ImageFolderSplits:
    """``data`` itself when already opened, else the dataset folder opened (train/ required;
    listed when first read: a sync looks up only the annotated images)."""
    if isinstance(data, ImageFolderSplits):
        return data
    return ImageFolderSplits.open(data, required=("train",), lazy=True)


def sync_from_label_studio(
    label_studio: LabelStudioConfig,
    data: str | Path | ImageFolderSplits,
    masks_root: str | Path,
    sync: SyncConfig = SyncConfig(),
    dry_run: bool = False,
    progress: Callable | None = None,
    client: Any = None,
):
    """Connect and run :func:`sync_masks` for the project titled ``label_studio.project``.

    ``client``: an already connected label-studio-sdk client (default: ``connect`` with the
    URL and API key of ``label_studio``). Returns the :class:`SyncReport`.
    """
    from robustar_ls.labelstudio import client as ls_client
    from robustar_ls.labelstudio.sync import sync_masks
    from robustar_ls.workflows.project import project_id

    data = open_data(data)
    if client is None:
        client = ls_client.connect(label_studio.url, label_studio.api_key)
    pid = project_id(client, label_studio)
    masks_root = Path(masks_root)
    # a dry run writes nothing, not even the lock file
    with nullcontext() if dry_run else mask_store_lock(masks_root):
        return sync_masks(
            client,
            pid,
            data,
            MaskStore(masks_root),
            dry_run=dry_run,
            progress=progress,
            retries=sync.retries,
            backoff=sync.backoff,
            page_size=sync.page_size,
            label=sync.label,
        )


@dataclass(frozen=True)
class TrainPlan:
    """What the paired fine-tuning after a sync trains on, and where it writes."""

    data: ImageFolderSplits
    checkpoint: Path
    masks_root: Path
    paired: PairedConfig
    recipe: Recipe
    out: str | Path | None = None
    progress: Callable | None = None
    segmenter: SegmenterStep | None = None  # None = SegmenterStep()
    on_progress: OnProgress | None = None


def sync_and_train(
    data: str | Path | ImageFolderSplits,
    checkpoint: str | Path,
    *,
    label_studio: LabelStudioConfig | None = None,
    paired: PairedConfig = PairedConfig(),
    recipe: Recipe = Recipe(),
    sync: SyncConfig = SyncConfig(),
    masks: str | Path | None = None,
    out: str | Path | None = None,
    dry_run: bool = False,
    progress: Callable | None = None,
    client: Any = None,
    segmenter: SegmenterStep | None = None,
    on_progress: OnProgress | None = None,
) -> dict[str, Any] | None:
    """Sync (when ``label_studio`` is given), then paired training of ``checkpoint`` by
    ``recipe`` (:mod:`robustar_ls.train.recipe`: fine-tuning, or a rebuild from the initial
    weights with the masks propagated; ``auto`` chooses from how far the masks spread).
    ``on_progress`` gets the job's progress records (``train/progress.py``), sync included.

    Between the two, the learned segmenter is retrained when the sync changed masks, and when
    the recipe needs it (or ``segmenter.propagate``) its confident masks join the training
    (:mod:`robustar_ls.workflows.segmenter_step`); ``"segmenter"`` and ``"recipe"`` in the
    summary say how.

    Returns ``paired_finetune``'s summary (``model_version``, ``parent_version``, ``before``,
    ``after``, …) plus ``"sync"``: the sync report as a dict (None without Label Studio) and
    ``"trained"``: True. With ``dry_run`` the sync only reports and nothing is trained
    (``{"sync": …, "trained": False}``). On a ``torchrun`` rank other than 0, None.

    Under ``torchrun`` only rank 0 talks to Label Studio; the other ranks wait for it in the
    process group (started here, then reused by the training) before reading the masks.
    """
    default_masks = (data.root if isinstance(data, ImageFolderSplits) else Path(data)) / "masks"
    plan = TrainPlan(
        open_data(data),
        Path(checkpoint),
        Path(masks or default_masks),
        paired,
        recipe,
        out,
        progress,
        segmenter,
        on_progress,
    )
    # One training per checkpoint at a time, CLI and server alike (a dry run trains nothing).
    if dry_run:
        return _sync_then_train(plan, label_studio, sync, dry_run, client)
    from robustar_ls.train.checkpoint_guard import training_lock

    with training_lock(plan.checkpoint):
        return _sync_then_train(plan, label_studio, sync, dry_run, client)


def _sync_then_train(plan: TrainPlan, label_studio, sync, dry_run, client):
    if label_studio is None and dry_run:
        raise ValueError("dry_run needs Label Studio settings: it previews a sync")
    from robustar_ls.train.torchrun import process_group

    with process_group(plan.recipe.finetune.device) as ctx:
        if ctx is None:  # one process: torch not even imported
            return _run(plan, label_studio, sync, dry_run, client, _here)
        share = lambda compute, what: _on_rank0_then_share(ctx, compute, what)  # noqa: E731
        result = _run(plan, label_studio, sync, dry_run, client, share)
        return result if ctx.is_main else None


def _here(compute: Callable[[], Any], what: str) -> Any:
    """One process: run ``compute`` (the counterpart of :func:`_on_rank0_then_share`)."""
    return compute()


def _run(plan: TrainPlan, label_studio, sync, dry_run, client, share) -> dict[str, Any] | None:
    """Sync (unless there is no Label Studio), then train; ``share(compute, what)`` runs the
    steps every rank needs the result of (the sync, the learned segmenter's) once."""
    if label_studio is None:
        return _train(plan, None, changed=False, share=share)

    def run_sync():
        if plan.on_progress is not None:
            plan.on_progress(progress_record("sync"))
        return sync_from_label_studio(
            label_studio, plan.data, plan.masks_root, sync, dry_run, plan.progress, client
        )

    report = share(run_sync, "sync from Label Studio")
    if dry_run:
        return {"sync": report.to_dict(), "trained": False}
    _check_has_masks(plan, report)
    return _train(plan, report.to_dict(), changed=report.changed, share=share)


def _train(
    plan: TrainPlan, report: dict[str, Any] | None, changed: bool, share=_here
) -> dict[str, Any] | None:
    from robustar_ls.train.finetune import paired_finetune
    from robustar_ls.train.paired_data import training_masks
    from robustar_ls.workflows.segmenter_step import SegmenterStep, run_segmenter_step

    asked = plan.segmenter if plan.segmenter is not None else SegmenterStep()
    step = replace(asked, propagate=asked.propagate or plan.recipe.propagates)
    seg_summary, extra = share(
        lambda: run_segmenter_step(step, plan.data, plan.masks_root, changed),
        "run the learned segmenter",
    )
    expert = len(training_masks(plan.data, plan.masks_root, None, None))
    choice = choose(plan.recipe, expert, len(extra), len(plan.data.splits["train"]))
    log.info("recipe: %s", choice.reason)
    if choice.name == "finetune" and not asked.propagate:
        extra = {}  # a fine-tuning pairs the expert's masks only, unless asked to propagate
    result = paired_finetune(
        plan.data,
        plan.checkpoint,
        plan.masks_root,
        plan.paired,
        choice.train,
        out=plan.out,
        progress=None if plan.on_progress else plan.progress,  # one bar, not two
        on_progress=plan.on_progress,
        history={"sync": _sync_counts(report), "recipe": choice.name},
        **({"extra_masks": extra} if extra else {}),
        **({"from_scratch": True} if choice.from_scratch else {}),
    )
    if result is None:
        return None
    recipe = {"name": choice.name, "reason": choice.reason, "asked": plan.recipe.name}
    return {**result, "sync": report, "trained": True, "segmenter": seg_summary, "recipe": recipe}


def _sync_counts(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the model history keeps of a sync report: its counts."""
    return dict(report["counts"]) if report is not None else None


def _on_rank0_then_share(ctx, compute: Callable[[], Any], what: str) -> Any:
    """Run ``compute`` on rank 0 only; every rank returns its result (or raises its error).
    The result must pickle (a sync report; a segmenter summary with the propagated masks'
    paths, which the other ranks read from the same file system)."""
    import torch.distributed as dist

    box: list[Any] = [None]
    error: BaseException | None = None
    if ctx.is_main:
        try:
            box = [{"ok": compute()}]
        except Exception as err:  # shared, then re-raised below
            error = err
            box = [{"error": f"{type(err).__name__}: {err}"}]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if "error" in box[0]:
        raise SyncRankError(f"rank 0 failed to {what}: {box[0]['error']}")
    return box[0]["ok"]


def _check_has_masks(plan: TrainPlan, report) -> None:
    samples = plan.data.splits["train"]
    if not MaskStore(plan.masks_root).match([s.relpath for s in samples]):
        raise NoMasksError(
            f"no training image has a mask in {plan.masks_root} after syncing from Label Studio "
            f"({report.summary()}); paint 'Spurious' regions and submit the annotations first"
        )


def training_job(
    data: str | Path,
    checkpoint: str | Path,
    *,
    label_studio: LabelStudioConfig | None,
    paired: PairedConfig = PairedConfig(),
    recipe: Recipe = Recipe(),
    sync: SyncConfig = SyncConfig(),
    masks: str | Path | None = None,
    segmenter: SegmenterStep | None = None,
) -> Callable[[dict[str, Any], OnProgress | None], dict[str, Any] | None]:
    """The ``run(payload, on_progress)`` for :class:`robustar_ls.workflows.jobs.TrainingJobs`:
    each "Start Training" webhook syncs and trains in place (the served checkpoint is replaced
    atomically, the backend picks up the new version on its next request). The dataset is
    opened per job, so images added between jobs are seen."""

    def run(
        payload: dict[str, Any], on_progress: OnProgress | None = None
    ) -> dict[str, Any] | None:
        log.info("training job triggered by %s", payload.get("action", "a request"))
        return sync_and_train(
            data,
            checkpoint,
            label_studio=label_studio,
            paired=paired,
            recipe=recipe,
            sync=sync,
            masks=masks,
            segmenter=segmenter,
            on_progress=on_progress,
        )

    return run
