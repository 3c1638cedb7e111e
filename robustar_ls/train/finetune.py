"""Paired fine-tuning of a served checkpoint from spurious-pixel masks.

:func:`paired_finetune` loads a checkpoint, evaluates it on every split, fine-tunes it on
``train/`` with the paired loss (``paired.py``) for the images that have a mask in a
mask-store folder, evaluates again and writes the new checkpoint atomically (new model version,
the old one as parent, the metrics and the settings). Until that final ``os.replace`` the old
checkpoint file is untouched, so a run killed at any moment leaves the old model serving.

One epoch is :func:`robustar_ls.train.paired_epoch.paired_train_one_epoch`. SGD with a cosine
schedule over all steps (a constant rate gave unstable end points: README.md, "Sync and paired
training"; the runs are in bench/README.md).

Launched by ``torchrun`` it trains with DistributedDataParallel: each process sees its shard
(DistributedSampler), ``TrainConfig.batch_size`` is per process, and only rank 0 evaluates and
writes the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from robustar_ls.config import ConfigError, PairedConfig, TrainConfig, to_dict
from robustar_ls.data.folders import ImageFolderSplits, Sample
from robustar_ls.data.groups import groups_before_after
from robustar_ls.models.checkpoint import (
    Checkpoint,
    Provenance,
    load_checkpoint,
    save_checkpoint,
)
from robustar_ls.models.zoo import create_classifier
from robustar_ls.train.checkpoint_guard import check_unchanged
from robustar_ls.train.distributed import (
    DistContext,
    barrier,
    init_distributed,
    shutdown,
)
from robustar_ls.train.fills import FILL_MODES
from robustar_ls.train.loop import EpochContext, Progress, make_optimizer, seed_everything
from robustar_ls.train.paired_data import PairedDataset, training_masks
from robustar_ls.train.paired_epoch import TERMS, paired_train_one_epoch
from robustar_ls.train.progress import OnProgress, ProgressTracker
from robustar_ls.train.run import evaluate_splits
from robustar_ls.train.torchrun import launch

log = logging.getLogger(__name__)

ATTENTION_IMAGES = 256  # paired images whose saliency is measured before and after


def _check_paired_config(cfg: PairedConfig) -> None:
    if cfg.fill not in FILL_MODES:
        raise ConfigError(f"unknown fill {cfg.fill!r}; choose one of {', '.join(FILL_MODES)}")
    if cfg.align_weight < 0:
        raise ConfigError(f"align_weight must be >= 0, got {cfg.align_weight}")
    if cfg.worst_of < 1:
        raise ConfigError(f"worst_of must be >= 1, got {cfg.worst_of}")


def _accuracies(splits: dict[str, dict[str, float]]) -> dict[str, float]:
    return {split: metrics["accuracy"] for split, metrics in splits.items()}


@dataclass(frozen=True)
class FinetuneRequest:
    """One paired fine-tuning as its caller asks for it (opened into a :class:`FinetuneRun`).

    ``data``: the dataset folder, or the dataset already opened (a sync-train opens it once).
    ``masks_root`` is a mask-store folder (``<root>/train/<class>/<stem>.png``); ``None`` means
    plain fine-tuning (every image unannotated: the control). ``only`` restricts which masks are
    used (image relpaths "<class>/<file>"). ``out``: where the result is written (default: over
    ``checkpoint``). ``extra_masks`` (relpath → mask file, e.g. propagated masks) pair the
    images that have no mask in ``masks_root``: those always win. ``history`` adds fields to the
    checkpoint's history line. ``from_scratch``: train from :func:`initial_model` instead.
    ``dist``: the process group a workflow started once at its entry
    (``train/torchrun.process_group``); without it one is started (and ended) here.
    """

    data: str | Path | ImageFolderSplits
    checkpoint: str | Path
    masks_root: str | Path | None
    paired: PairedConfig = field(default_factory=PairedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    only: set[str] | None = None
    out: str | Path | None = None
    extra_masks: Mapping[str, Path] | None = None
    history: dict[str, Any] | None = None
    from_scratch: bool = False
    dist: DistContext | None = None  # the workflow's process group (None: start one here)


def paired_finetune(
    request: FinetuneRequest,
    progress: Progress | None = None,
    on_progress: OnProgress | None = None,
) -> dict[str, Any] | None:
    """Fine-tune ``request.checkpoint`` with the paired loss; write the result to
    ``request.out``. ``progress`` wraps the batches of an epoch (a bar); ``on_progress`` gets
    the progress records (``train/progress.py``) on rank 0.

    Returns, on rank 0: ``{model_version, parent_version, before: {split: accuracy},
    after: {split: accuracy}, counts: {split: n}, annotated, epochs, history: [per-epoch
    terms], loss_terms: last epoch's terms, seconds, out}``; other ranks return ``None``.
    """
    _check_paired_config(request.paired)
    data = (
        request.data
        if isinstance(request.data, ImageFolderSplits)
        else ImageFolderSplits.open(request.data, required=("train",))
    )
    masks = training_masks(data, request.masks_root, request.only, request.extra_masks)
    checkpoint = Path(request.checkpoint)
    parent = load_checkpoint(checkpoint, classes=data.classes)
    own = request.dist is None  # a workflow that started the group ends it, too
    ctx = init_distributed(request.train.device, launch()) if own else request.dist
    try:
        return _run(
            FinetuneRun(
                data=data,
                masks=masks,
                masks_root=Path(request.masks_root) if request.masks_root is not None else None,
                parent=parent,
                paired=request.paired,
                train=request.train,
                out=Path(request.out) if request.out else checkpoint,
                progress=progress,
                ctx=ctx,
                source=checkpoint,
                on_progress=on_progress,
                history=request.history,
                from_scratch=request.from_scratch,
            )
        )
    finally:
        if own:
            shutdown(ctx)


def initial_model(parent: Checkpoint) -> nn.Module:
    """``parent``'s architecture, width and classes at the weights ``robustar-ls train``
    starts from (ImageNet's where the parent was trained from them, else random, seeded by
    the caller): for a shortcut the model learned in place of the objects (every training
    image carries it), which fine-tuning cannot unlearn and paired training from the start
    can (bench/README.md, "fraction 1.0"). The result's parent is still ``parent``."""
    pretrained = bool(parent.config.get("model", {}).get("pretrained", False))
    pretrained = pretrained or parent.normalization.weights is not None  # its ancestor's
    return create_classifier(
        parent.arch, len(parent.classes), width=parent.width, pretrained=pretrained
    )


@dataclass(frozen=True)
class FinetuneRun:
    """Everything one paired fine-tuning run works with: its :class:`FinetuneRequest` opened
    and resolved."""

    data: ImageFolderSplits
    masks: dict[str, Path]  # image relpath -> mask file, for the annotated training images
    masks_root: Path | None
    parent: Checkpoint
    paired: PairedConfig
    train: TrainConfig
    out: Path
    progress: Progress | None
    ctx: DistContext
    source: Path | None = None  # the checkpoint trained from: checked unchanged before writing
    on_progress: OnProgress | None = None
    history: dict[str, Any] | None = None
    from_scratch: bool = False  # train from the architecture's initial weights

    @property
    def samples(self) -> list[Sample]:
        return self.data.splits["train"]


def _run(run: FinetuneRun) -> dict[str, Any] | None:
    ctx, device = run.ctx, run.ctx.device
    generator = seed_everything(run.train.seed)  # data order (one process)
    model = run.parent.model.to(device)
    loader, sampler = _paired_loader(run, generator)
    tracker = ProgressTracker(
        run.on_progress if ctx.is_main else None, run.train.epochs, len(loader)
    )
    size = run.parent.image_size
    before = evaluate_splits(model, run.data, size, device, tracker=tracker) if ctx.is_main else {}
    attention = {"before": _attention(model, loader.dataset) if ctx.is_main else None}
    if run.from_scratch:  # the same seed on every rank: DDP starts from identical weights
        torch.manual_seed(run.train.seed)
        model = initial_model(run.parent).to(device)
    barrier(ctx)
    history, seconds = _train_epochs(run, _wrap_ddp(model, ctx), loader, sampler, tracker)
    if not ctx.is_main:
        barrier(ctx)
        return None
    after = evaluate_splits(model, run.data, size, device, tracker=tracker)
    attention["after"] = _attention(model, loader.dataset)
    tracker.start("write")
    version = _save(run, model, (before, after, attention), history, seconds)
    barrier(ctx)
    log.info("wrote %s (%s, parent %s)", run.out, version, run.parent.version)
    return {
        "model_version": version,
        "parent_version": run.parent.version,
        "before": _accuracies(before),
        "after": _accuracies(after),
        "groups": groups_before_after(before, after),
        "saliency_in_masks": attention,
        "counts": {split: int(m["n"]) for split, m in after.items()},
        "annotated": len(run.masks),
        "train_images": len(run.samples),
        "epochs": run.train.epochs,
        "history": history,
        "loss_terms": {t: history[-1][t] for t in TERMS} if history else {},
        "seconds": seconds,
        "out": str(run.out),
    }


def _paired_loader(
    run: FinetuneRun, generator: torch.Generator
) -> tuple[DataLoader, DistributedSampler | None]:
    """Shuffled batches of the paired dataset; under DDP each process gets its shard."""
    ctx, cfg = run.ctx, run.train
    dataset = PairedDataset(run.samples, run.parent.image_size, run.masks)
    sampler = (
        DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed)
        if ctx.distributed
        else None
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator if sampler is None else None,
        num_workers=cfg.num_workers,
    )
    return loader, sampler


def _wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _train_epochs(
    run: FinetuneRun,
    model: nn.Module,
    loader: DataLoader,
    sampler: DistributedSampler | None,
    tracker: ProgressTracker,
) -> tuple[list[dict[str, float]], float]:
    """Every epoch of paired training: (per-epoch terms, seconds)."""
    ctx, cfg = run.ctx, run.train
    # crop, flip and fill draws: a different stream per process
    aug_generator = torch.Generator().manual_seed(cfg.seed + 1 + ctx.rank)
    optimizer, scheduler = make_optimizer(model, cfg, cfg.epochs * len(loader))
    context = EpochContext(
        optimizer,
        scheduler,
        ctx.device,
        epochs=cfg.epochs,
        augment=cfg.augment,
        generator=aug_generator,
        progress=run.progress if ctx.is_main else None,
        on_step=tracker.step,
        dist=ctx,
    )
    log.info(
        "paired fine-tuning %s: %d of %d training images annotated, fill %s, λ %g, worst of %d",
        run.parent.version,
        len(run.masks),
        len(run.samples),
        run.paired.fill,
        run.paired.align_weight,
        run.paired.worst_of,
    )
    history, started = [], time.perf_counter()
    for epoch in range(cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        tick = time.perf_counter()
        tracker.start_epoch(epoch)
        stats = paired_train_one_epoch(model, loader, context, run.paired, epoch)
        history.append({"epoch": epoch + 1, **stats, "seconds": time.perf_counter() - tick})
        if ctx.is_main:
            log.info(
                "epoch %d/%d loss %.4f ce %.4f ce_paired %.4f align %.4f acc %.4f",
                epoch + 1,
                cfg.epochs,
                *(stats[t] for t in TERMS),
                stats["accuracy"],
            )
    return history, time.perf_counter() - started


def _attention(model: nn.Module, dataset: PairedDataset) -> float | None:
    """The share of the model's saliency inside the masks of (up to
    :data:`ATTENTION_IMAGES` of) the paired images (``train/mask_attention.py``)."""
    from robustar_ls.train.mask_attention import share_in_masks

    paired = [i for i, s in enumerate(dataset.samples) if s.relpath in dataset.masks]
    rows = [dataset[i] for i in paired[:ATTENTION_IMAGES]]  # only those images are decoded
    if not rows:
        return None
    images, masks = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    labels = torch.tensor([r[3] for r in rows])
    device = next(model.parameters()).device
    return share_in_masks(model, images.to(device), masks, labels.to(device))


def _save(
    run: FinetuneRun,
    model: nn.Module,
    metrics: tuple[dict, dict, dict],
    history: list[dict[str, float]],
    seconds: float,
) -> str:
    """Write the fine-tuned checkpoint atomically (the parent as its parent); its version.
    ``metrics``: the splits before and after, and the saliency share in the masks.

    Compare-and-swap: refused when the source checkpoint no longer holds the parent version.
    """
    before, after, attention = metrics
    if run.source is not None:
        check_unchanged(run.source, run.parent.version)
    return save_checkpoint(
        run.out,
        model,
        arch=run.parent.arch,
        classes=run.data.classes,
        image_size=run.parent.image_size,
        width=run.parent.width,
        provenance=Provenance(
            parent_version=run.parent.version,
            metrics={
                "splits": after,
                "before": before,
                "history": history,
                "saliency_in_masks": attention,
            },
            config={
                "paired": to_dict(run.paired),
                "train": to_dict(run.train),
                "data": str(run.data.root),
                "masks": str(run.masks_root) if run.masks_root is not None else None,
                "annotated": len(run.masks),
                "from_scratch": run.from_scratch,
                "world_size": run.ctx.world_size,
            },
            history={"seconds": round(seconds, 3), **(run.history or {})},
        ),
    )
