"""Sync masks from Label Studio, then paired training: the job behind ``robustar-ls sync-train``
and behind Label Studio's "Start Training" button (``/webhook`` → :class:`TrainingJobs`).

:func:`sync_and_train` runs: connect → find the project → :func:`sync_masks` into the mask store
(``<data>/masks`` unless told otherwise) → :func:`paired_finetune` from the served checkpoint →
a summary with the sync report. Without Label Studio settings it trains from the masks already in
the store (e.g. ``<data>/oracle_masks``). Its entries (the CLI, the server's job) build one
:class:`SyncTrainRequest` (:meth:`SyncTrainRequest.open`: the dataset folder opened once, the
mask store resolved, the torchrun launch read), and it is passed down whole: the sync, the
learned segmenter's step and the training read the same opened dataset.

Syncs into one mask store are serialised by an ``flock`` on ``<masks>/.sync.lock``: a CLI run and
a webhook job never interleave their writes. A dry run takes no lock (it writes nothing, not even
the lock file). Under ``torchrun`` only rank 0 syncs; the other ranks wait for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustar_ls.config import LabelStudioConfig, PairedConfig, SyncConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore, masks_root
from robustar_ls.errors import RobustarError
from robustar_ls.files import exclusive_lock
from robustar_ls.train import torchrun
from robustar_ls.train.progress import OnProgress, progress_record
from robustar_ls.train.recipe import Recipe, choose
from robustar_ls.train.torchrun import Launch

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


@dataclass(frozen=True)
class SyncTrainRequest:
    """One sync-train, built once at its entry (:meth:`open`: the dataset opened, the mask
    store resolved, the torchrun launch read) and passed down whole."""

    data: ImageFolderSplits
    checkpoint: Path
    masks_root: Path
    label_studio: LabelStudioConfig | None = None  # None: train from the masks in the store
    paired: PairedConfig = PairedConfig()
    recipe: Recipe = Recipe()
    sync: SyncConfig = SyncConfig()
    segmenter: SegmenterStep | None = None  # None = SegmenterStep()
    out: str | Path | None = None  # the new checkpoint; default: over ``checkpoint``
    dry_run: bool = False  # report what the sync would change; write and train nothing
    progress: Callable | None = None  # tqdm-style bars
    on_progress: OnProgress | None = None  # the job's progress records (train/progress.py)
    launch: Launch = field(default_factory=torchrun.launch)
    dist: Any = None  # the process group once started (train.distributed.DistContext)

    @classmethod
    def open(
        cls,
        data: str | Path | ImageFolderSplits,
        checkpoint: str | Path,
        masks: str | Path | None = None,
        **settings: Any,
    ) -> SyncTrainRequest:
        """The request for the dataset ``data`` (a folder, or already opened) and
        ``checkpoint``; ``masks``: the mask store (default ``<data>/masks``,
        :func:`~robustar_ls.data.masks.masks_root`); ``settings``: the other fields."""
        root = data.root if isinstance(data, ImageFolderSplits) else data
        return cls(open_data(data), Path(checkpoint), masks_root(root, masks), **settings)


def sync_from_label_studio(request: SyncTrainRequest, client: Any = None):
    """Connect and run :func:`sync_masks` for the project titled
    ``request.label_studio.project``, into ``request.masks_root``.

    ``client``: an already connected label-studio-sdk client (default: ``connect`` with the
    URL and API key of ``request.label_studio``). Returns the :class:`SyncReport`.
    """
    from robustar_ls.labelstudio import client as ls_client
    from robustar_ls.labelstudio.sync import sync_masks
    from robustar_ls.workflows.project import project_id

    label_studio, masks = request.label_studio, request.masks_root
    if label_studio is None:
        raise ValueError("a sync needs Label Studio settings")
    if client is None:
        client = ls_client.connect(label_studio.url, label_studio.api_key)
    pid = project_id(client, label_studio)
    # a dry run writes nothing, not even the lock file
    with nullcontext() if request.dry_run else mask_store_lock(masks):
        return sync_masks(
            client,
            pid,
            request.data,
            MaskStore(masks),
            request.sync,
            dry_run=request.dry_run,
            progress=request.progress,
        )


def sync_and_train(request: SyncTrainRequest, client: Any = None) -> dict[str, Any] | None:
    """Sync (when ``request.label_studio`` is given), then paired training of
    ``request.checkpoint`` by ``request.recipe`` (:mod:`robustar_ls.train.recipe`: fine-tuning,
    or a rebuild from the initial weights with the masks propagated; ``auto`` chooses from how
    far the masks spread). ``request.on_progress`` gets the job's progress records
    (``train/progress.py``), sync included; ``client``: a connected Label Studio client.

    Between the two, the learned segmenter is retrained when the sync changed masks, and when
    the recipe needs it (or ``segmenter.propagate``) its confident masks join the training
    (:mod:`robustar_ls.workflows.segmenter_step`); ``"segmenter"`` and ``"recipe"`` in the
    summary say how.

    Returns ``paired_finetune``'s summary (``model_version``, ``parent_version``, ``before``,
    ``after``, …) plus ``"sync"``: the sync report as a dict (None without Label Studio) and
    ``"trained"``: True. With ``dry_run`` the sync only reports and nothing is trained
    (``{"sync": …, "trained": False}``). On a ``torchrun`` rank other than 0, None.

    Under ``torchrun`` only rank 0 talks to Label Studio; the other ranks wait for it in the
    process group (started here, once, then reused by the training) before reading the masks.
    """
    if request.label_studio is None and request.dry_run:
        raise ValueError("dry_run needs Label Studio settings: it previews a sync")
    # One training per checkpoint at a time, CLI and server alike (a dry run trains nothing).
    if request.dry_run:
        return _in_process_group(request, client)
    from robustar_ls.train.checkpoint_guard import training_lock

    with training_lock(request.checkpoint, request.launch):
        return _in_process_group(request, client)


def _in_process_group(request: SyncTrainRequest, client: Any) -> dict[str, Any] | None:
    with torchrun.process_group(request.recipe.finetune.device, request.launch) as ctx:
        if ctx is None:  # one process: torch not even imported
            return _run(request, client, _here)
        share = lambda compute, what: _on_rank0_then_share(ctx, compute, what)  # noqa: E731
        result = _run(replace(request, dist=ctx), client, share)
        return result if ctx.is_main else None


def _here(compute: Callable[[], Any], what: str) -> Any:
    """One process: run ``compute`` (the counterpart of :func:`_on_rank0_then_share`)."""
    return compute()


def _run(request: SyncTrainRequest, client: Any, share) -> dict[str, Any] | None:
    """Sync (unless there is no Label Studio), then train; ``share(compute, what)`` runs the
    steps every rank needs the result of (the sync, the learned segmenter's) once."""
    if request.label_studio is None:
        return _train(request, None, changed=False, share=share)

    def run_sync():
        if request.on_progress is not None:
            request.on_progress(progress_record("sync"))
        return sync_from_label_studio(request, client)

    report = share(run_sync, "sync from Label Studio")
    if request.dry_run:
        return {"sync": report.to_dict(), "trained": False}
    _check_has_masks(request, report)
    return _train(request, report.to_dict(), changed=report.changed, share=share)


def _train(
    request: SyncTrainRequest, report: dict[str, Any] | None, changed: bool, share=_here
) -> dict[str, Any] | None:
    from robustar_ls.train.finetune import FinetuneRequest, paired_finetune
    from robustar_ls.train.paired_data import training_masks
    from robustar_ls.workflows.segmenter_step import SegmenterStep, run_segmenter_step

    data, masks = request.data, request.masks_root
    asked = request.segmenter if request.segmenter is not None else SegmenterStep()
    step = replace(asked, propagate=asked.propagate or request.recipe.propagates)
    seg_summary, extra = share(
        lambda: run_segmenter_step(step, data, masks, changed), "run the learned segmenter"
    )
    expert = len(training_masks(data, masks, None, None))
    choice = choose(request.recipe, expert, len(extra), len(data.splits["train"]))
    log.info("recipe: %s", choice.reason)
    if choice.name == "finetune" and not asked.propagate:
        extra = {}  # a fine-tuning pairs the expert's masks only, unless asked to propagate
    finetune = FinetuneRequest(
        data,
        request.checkpoint,
        masks,
        request.paired,
        choice.train,
        out=request.out,
        extra_masks=extra or None,
        history={"sync": _sync_counts(report), "recipe": choice.name},
        from_scratch=choice.from_scratch,
        dist=request.dist,  # the process group started once, above
    )
    result = paired_finetune(
        finetune,
        progress=None if request.on_progress else request.progress,  # one bar, not two
        on_progress=request.on_progress,
    )
    if result is None:
        return None
    recipe = {"name": choice.name, "reason": choice.reason, "asked": request.recipe.name}
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


def _check_has_masks(request: SyncTrainRequest, report) -> None:
    samples = request.data.splits["train"]
    if not MaskStore(request.masks_root).match([s.relpath for s in samples]):
        raise NoMasksError(
            f"no training image has a mask in {request.masks_root} after syncing from Label "
            f"Studio ({report.summary()}); paint 'Spurious' regions and submit the annotations "
            "first"
        )


def training_job(
    open_request: Callable[[], SyncTrainRequest],
) -> Callable[[dict[str, Any], OnProgress | None], dict[str, Any] | None]:
    """The ``run(payload, on_progress)`` for :class:`robustar_ls.workflows.jobs.TrainingJobs`:
    each "Start Training" webhook syncs and trains in place (the served checkpoint is replaced
    atomically, the backend picks up the new version on its next request). ``open_request()``
    builds each job's request (:meth:`SyncTrainRequest.open`): the dataset is opened per job,
    so images added between jobs are seen."""

    def run(
        payload: dict[str, Any], on_progress: OnProgress | None = None
    ) -> dict[str, Any] | None:
        log.info("training job triggered by %s", payload.get("action", "a request"))
        return sync_and_train(replace(open_request(), on_progress=on_progress))

    return run
