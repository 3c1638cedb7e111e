"""A simulated annotator: how much of the shortcut gap does a labeling budget buy?

:func:`simulate` orders the training images of a dataset (``influence``: the scores that
``robustar-ls influence`` gives the checkpoint; ``loss``: highest training loss first;
``random``: a seeded shuffle), takes the first ``budget x N`` of them, "annotates" those that
have a reference mask (a picked image without one costs its share of the budget and adds
nothing, like a Label Studio annotation without a Spurious region; so does a picked image that
``spurious.json`` marks as carrying no feature), then runs the paired
fine-tuning that ``sync-train`` runs (:func:`robustar_ls.train.finetune.paired_finetune`) from
those masks only. ``budget = 0`` is the control: plain fine-tuning, no mask.

The checkpoint is never modified: the result goes to ``out`` (or to a temporary file that is
removed). The summary's ``gap_recovered`` is ``(OOD_after - OOD_before) / (ID_before -
OOD_before)`` with ID = ``val`` accuracy (``train`` without a val split) and OOD = ``test``.
Where the dataset has ``groups.json`` (``make-dataset``'s), ``groups`` holds each split's
worst-group and bias-conflicting accuracy before and after (``data/groups.py``); ``before`` and
``after`` stay ``{split: accuracy}``.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.nn import functional as F

from robustar_ls.config import InfluenceConfig, PairedConfig
from robustar_ls.data.folders import ImageFolderSplits, Sample, classes_among, in_class_turns
from robustar_ls.errors import RobustarError
from robustar_ls.models.checkpoint import Checkpoint, load_checkpoint
from robustar_ls.models.history import read_history
from robustar_ls.train.finetune import FinetuneRequest, paired_finetune
from robustar_ls.train.paired_data import find_masks
from robustar_ls.train.recipe import Recipe, choose
from robustar_ls.train.run import make_loader

log = logging.getLogger(__name__)

ORDERS = ("influence", "random", "loss")
Progress = Callable[..., Iterable]


class SimulateError(RobustarError):
    """The simulation cannot run as asked; the message says what to change."""


class Training(NamedTuple):
    """How the simulated annotations are trained on, and where the result goes."""

    paired: PairedConfig
    recipe: Recipe
    out: str | Path | None
    progress: Progress | None
    propagate_asked: bool  # keep propagated masks even when the recipe fine-tunes


def check_request(order: str, budget: float) -> None:
    if order not in ORDERS:
        raise SimulateError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    if not 0.0 <= budget <= 1.0:
        raise SimulateError(
            f"--budget is a fraction of the training images in [0, 1], got {budget}"
        )


@torch.no_grad()
def loss_ranking(ckpt: Checkpoint, samples: Sequence[Sample], device: str = "cpu") -> list[str]:
    """Training images by the checkpoint's cross-entropy, highest first (ties by relpath)."""
    model = ckpt.model.eval().to(device)
    losses: list[float] = []
    for images, labels in make_loader(list(samples), ckpt.image_size, 256):
        logits = model(images.to(device))
        losses += F.cross_entropy(logits, labels.to(device), reduction="none").tolist()
    order = sorted(range(len(samples)), key=lambda i: (-losses[i], samples[i].relpath))
    return [samples[i].relpath for i in order]


def random_ranking(samples: Sequence[Sample], seed: int) -> list[str]:
    """A shuffle of the training images, the same for the same seed and image list."""
    relpaths = sorted(s.relpath for s in samples)
    random.Random(seed).shuffle(relpaths)
    return relpaths


def influence_ranking(
    ckpt: Checkpoint,
    data: ImageFolderSplits,
    cfg: InfluenceConfig,
    cache_root: str | Path | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Training images by their influence on the checkpoint's test errors, highest first
    (``robustar-ls influence``'s scores, cached the same way)."""
    from robustar_ls.workflows.influence import score

    if cfg.test_split not in data.splits:
        raise SimulateError(
            f"--order influence scores against {data.root}/{cfg.test_split}/, which is missing"
        )
    return score(data, ckpt, cfg, cache_root=cache_root, top=1, progress=progress).ranked()


def rank_images(
    order: str,
    data: ImageFolderSplits,
    ckpt: Checkpoint,
    *,
    seed: int = 0,
    influence: InfluenceConfig | None = None,
    cache_root: str | Path | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Every training image's relpath, in the order an annotator following ``order`` sees."""
    check_request(order, 0.0)
    samples = data.splits["train"]
    if order == "random":
        return random_ranking(samples, seed)
    if order == "loss":
        return loss_ranking(ckpt, samples, _device(influence))
    cfg = influence or InfluenceConfig()
    return influence_ranking(ckpt, data, cfg, cache_root, progress)


def _device(cfg: InfluenceConfig | None) -> str:
    from robustar_ls.models.zoo import default_device

    return str(default_device(cfg.device if cfg else "auto"))


def spurious_status(data_root: Path) -> dict[str, str] | None:
    """``spurious.json`` of a synthetic dataset (relpath → aligned/misaligned/none), if any."""
    path = data_root / "spurious.json"
    return json.loads(path.read_text()) if path.is_file() else None


def gap_recovered(before: dict[str, float], after: dict[str, float]) -> float | None:
    """``(OOD_after - OOD_before) / (ID_before - OOD_before)``; None without a gap to close."""
    id_split = "val" if "val" in before else "train"
    if "test" not in before or id_split not in before:
        return None
    gap = before[id_split] - before["test"]
    if gap <= 0:
        return None
    return (after["test"] - before["test"]) / gap


def pick_annotated(
    ranking: Sequence[str],
    budget: float,
    samples: Sequence[Sample],
    masks_root: Path,
    status: dict[str, str] | None = None,
) -> tuple[list[str], set[str]]:
    """The first ``round(budget x N)`` images of ``ranking`` and those the annotator paints.

    An image is painted when it has a reference mask and, where ``status`` (``spurious.json``)
    is known, carries the feature: a synthetic dataset's oracle mask of a neutral image marks
    where the feature *would* be, and an annotator paints nothing on a plain grey corner.
    """
    picked = list(ranking[: int(round(budget * len(samples)))])
    if not picked:
        return picked, set()
    found = set(find_masks(list(samples), masks_root, only=set(picked)))
    if status is not None:
        found = {rel for rel in found if status.get(rel, "none") != "none"}
    return picked, found


def simulate(
    data_root: str | Path,
    checkpoint: str | Path,
    *,
    order: str,
    budget: float,
    masks: str | Path | None = None,
    seed: int = 0,
    paired: PairedConfig = PairedConfig(),
    recipe: Recipe = Recipe(),
    influence: InfluenceConfig | None = None,
    out: str | Path | None = None,
    ranking: Sequence[str] | None = None,
    progress: Progress | None = None,
    propagate: float | None = None,
    review_share: float | None = None,
    balance_classes: bool = False,
) -> dict[str, Any]:
    """Annotate the first ``budget x N`` images in ``order``, train by ``recipe``, measure.

    ``masks``: default ``<data>/oracle_masks``; ``ranking``: a precomputed order; ``propagate``
    (a threshold; implied by the auto and rebuild recipes, :mod:`robustar_ls.train.recipe`):
    the segmenter learned from the picks pairs the others (``simulate_propagate``). Returns
    ``{order, budget, picked, annotated, before, after, groups, gap_recovered, recipe, ...}``."""
    check_request(order, budget)
    data_root = Path(data_root)
    data = ImageFolderSplits.open(data_root, required=("train",))
    samples = data.splits["train"]
    masks_root = Path(masks) if masks else data_root / "oracle_masks"
    if ranking is None and budget > 0:
        ranking = _rank(order, data, checkpoint, seed, influence, progress)
    if balance_classes and ranking:
        ranking = in_class_turns(ranking)
    status = spurious_status(data_root)
    training = Training(paired, recipe, out, progress, propagate is not None)
    propagate = _threshold(propagate, recipe)
    ranking = _review(ranking, budget, len(samples), review_share, seed, propagate)
    picked, annotated = pick_annotated(ranking or [], budget, samples, masks_root, status)
    spread = None if propagate is None or budget <= 0 else (data, picked, propagate, status)
    result, propagation = _finetune(
        data_root, checkpoint, masks_root, annotated, len(samples), training, spread
    )
    return {
        "propagation": propagation,
        "recipe": result["recipe"],
        "order": order,
        "balance_classes": balance_classes,
        "from_scratch": result["recipe"]["name"] == "rebuild",
        "budget": budget,
        "picked": len(picked),
        "picked_classes": classes_among(picked),
        "annotated": len(annotated),
        "spurious_annotated": _count_spurious(status, annotated),
        "before": result["before"],
        "after": result["after"],
        "groups": result.get("groups"),
        "gap_recovered": gap_recovered(result["before"], result["after"]),
        "model_version": result["model_version"],
        "out": str(out) if out else None,
    }


def _threshold(asked: float | None, recipe: Recipe) -> float | None:
    """The propagation threshold: the one asked, else the default where the recipe needs
    propagated masks, else None (no propagation)."""
    if asked is not None or not recipe.propagates:
        return asked
    from robustar_ls.train.propagate import DEFAULT_THRESHOLD

    return DEFAULT_THRESHOLD


def _count_spurious(status: dict[str, str] | None, annotated: Iterable[str]) -> int | None:
    """How many ``annotated`` images carry the feature, by ``spurious.json`` (None without)."""
    if status is None:
        return None
    return sum(status.get(rel, "none") != "none" for rel in annotated)


def _rank(order, data: ImageFolderSplits, checkpoint, seed, influence, progress) -> list[str]:
    """``rank_images`` for ``checkpoint``, influence features cached under the dataset."""
    ckpt = load_checkpoint(checkpoint, classes=data.classes)
    cache = data.root / ".robustar" / "influence"
    return rank_images(
        order, data, ckpt, seed=seed, influence=influence, cache_root=cache, progress=progress
    )


def _review(ranking, budget: float, n: int, share: float | None, seed: int, propagate):
    """With propagation, ``ranking`` with its review sample; otherwise ``ranking``."""
    from robustar_ls.workflows.simulate_propagate import DEFAULT_REVIEW_SHARE, with_review_sample

    if propagate is None or not ranking:
        return ranking
    share = DEFAULT_REVIEW_SHARE if share is None else share
    return with_review_sample(ranking, int(round(budget * n)), share, seed)


def _finetune(data_root, checkpoint, masks_root, annotated, images, training: Training, spread):
    """``paired_finetune`` from the annotated masks (none: plain), never over ``checkpoint``
    (``images``: how many training images, for the recipe's choice);
    with ``spread = (data, picked, threshold, status)`` also from propagated masks. Returns
    ``(result, propagation summary or None)``."""
    with tempfile.TemporaryDirectory(prefix="robustar-simulate-") as tmp:
        extra, propagation = {}, None
        if spread is not None:
            from robustar_ls.workflows.simulate_propagate import simulated_propagation

            data, picked, threshold, status = spread
            extra, propagation = simulated_propagation(
                data, masks_root, picked, annotated, threshold, Path(tmp) / "propagation", status
            )
        choice = choose(training.recipe, len(annotated), len(extra), images)
        log.info("recipe: %s", choice.reason)
        if choice.name == "finetune" and not training.propagate_asked:
            extra = {}  # as sync-train: a fine-tuning pairs the painted masks only
        target = Path(training.out) if training.out else Path(tmp) / "simulated.pt"
        request = FinetuneRequest(
            data_root,
            checkpoint,
            masks_root if annotated else None,
            training.paired,
            choice.train,
            only=set(annotated) if annotated else None,
            out=target,
            extra_masks=extra,
            history={"recipe": choice.name},
            from_scratch=choice.from_scratch,
        )
        result = paired_finetune(request, progress=training.progress)
        if result is not None:
            recipe = {"name": choice.name, "reason": choice.reason, "asked": training.recipe.name}
            result = {**result, "recipe": recipe}
        if result is not None and "groups" not in result:
            result = {**result, "groups": saved_groups(target, result["model_version"])}
    if result is None:  # pragma: no cover - simulate does not run under torchrun
        raise SimulateError("simulate ran as a non-zero torchrun rank")
    return result, propagation


def saved_groups(checkpoint: Path, version: str) -> dict[str, Any] | None:
    """The group metrics (before and after) that the history line of ``version`` written
    beside ``checkpoint`` holds (``models/history.py``); None when it has none.

    ``paired_finetune``'s result keeps accuracy only; its checkpoint keeps every metric."""
    for entry in reversed(read_history(checkpoint)):
        if entry.get("version") == version:
            return entry.get("groups")
    return None
