"""Influence run: score every training image against the test errors of an opened model, then
(optionally) write the scores into the Label Studio project's tasks.

Used by ``robustar-ls influence`` and by the demo; the scorer itself is
:class:`robustar_ls.explain.influence.InfluenceScorer`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustar_ls.config import InfluenceConfig, LabelStudioConfig
from robustar_ls.data.folders import ImageFolderSplits, classes_among, in_class_turns
from robustar_ls.explain.influence import InfluenceResult, InfluenceScorer, ScoreRequest
from robustar_ls.files import atomic_write_bytes
from robustar_ls.models.checkpoint import Checkpoint

if TYPE_CHECKING:
    from robustar_ls.train.distributed import DistContext

log = logging.getLogger(__name__)

SHOWN_BY_DEFAULT = 10
CLASS_MIX_TOP = 20  # the summary counts the classes among this many top images (or --top)
ONE_CLASS_SHARE = 0.75  # from this share of the top images in one class, the hint is shown


def score(
    data: ImageFolderSplits,
    ckpt: Checkpoint,
    cfg: InfluenceConfig,
    *,
    cache_root: str | Path | None = None,
    top: int | None = None,
    progress: Callable | None = None,
    ranks: DistContext | None = None,
) -> InfluenceResult | None:
    """Scores of ``data``'s train split against ``ckpt``'s errors on ``cfg.test_split``.

    Train features are cached per model version under ``cache_root`` (default
    ``<data>/.robustar/influence``). ``ranks`` (from
    :func:`robustar_ls.train.torchrun.process_group`): the processes share the featurizing;
    rank 0 returns the scores, the other ranks None.
    """
    request = ScoreRequest(
        train=data.splits["train"],
        test=data.splits[cfg.test_split],
        image_size=ckpt.image_size,
        model_version=ckpt.version,
        classes=data.classes,
        cache_root=Path(cache_root) if cache_root else data.root / ".robustar" / "influence",
        top=top,
    )
    scorer = InfluenceScorer(ckpt.model, None, cfg, device=ranks.device if ranks else None)
    return scorer.score(request, progress, ranks)


def take_class_turns(result: InfluenceResult) -> InfluenceResult:
    """``result`` with its ranks in class turns (``influence --balance-classes``): the first
    image of every class, then the second, ... each class in its own order; the scores stay."""
    order = in_class_turns(result.ranked())
    ranks = {rel: rank for rank, rel in enumerate(order, start=1)}
    return replace(result, ranks=ranks, config={**result.config, "class_turns": True})


def one_class_on_top(mix: dict[str, int], n_classes: int) -> str | None:
    """The class holding at least :data:`ONE_CLASS_SHARE` of the top images ``mix`` counts,
    when the dataset has other classes; else None. Masks of one class unteach a shortcut
    for that class only (bench/README.md, "classes taking turns")."""
    total = sum(mix.values())
    if n_classes < 2 or total < 2:
        return None
    name, count = next(iter(mix.items()))
    return name if count >= ONE_CLASS_SHARE * total else None


def summary(result: InfluenceResult, top: int | None = None) -> dict[str, Any]:
    """Model version, counts, the ``top`` (default 10) most responsible training images and
    ``top_classes``: the classes of the top ``top`` (default 20) images."""
    highlights = [
        {
            "relpath": rel,
            "score": result.scores[rel],
            "rank": result.ranks[rel],
            "drives": result.drives.get(rel, 0),
            "explains": result.explain_text(rel),
        }
        for rel in result.ranked(top if top is not None else SHOWN_BY_DEFAULT)
    ]
    return {
        "model_version": result.model_version,
        "train_images": len(result.scores),
        "test_error_count": len(result.test_errors),
        "top": highlights,
        "top_classes": classes_among(result.ranked(top or CLASS_MIX_TOP)),
    }


def document(result: InfluenceResult) -> dict[str, Any]:
    """The full scores, as ``--out`` writes them."""
    return {
        "model_version": result.model_version,
        "scores": result.scores,
        "ranks": result.ranks,
        "class_turns": bool(result.config.get("class_turns")),  # ranks in class turns
        "explains": result.explains,
        "test_errors": result.test_errors,
        "predictions": result.predictions,
    }


def write_document(result: InfluenceResult, path: str | Path) -> None:
    """:func:`document` as JSON at ``path``, atomically."""
    text = json.dumps(document(result), indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(Path(path), text.encode())


def write_to_label_studio(
    client: Any,
    label_studio: LabelStudioConfig,
    result: InfluenceResult,
    top: int | None = None,
    progress: Callable | None = None,
    test_split: str = "test",
) -> dict[str, Any]:
    """Write the scores into the training tasks, and the predictions and top training tasks
    into the ``test_split`` tasks, of the project titled ``label_studio.project``."""
    from robustar_ls.labelstudio.influence_fields import write_influence
    from robustar_ls.workflows.project import project_id

    pid = project_id(client, label_studio)
    report = write_influence(client, pid, result, top, progress, test_split=test_split)
    log.info(
        "Label Studio project %s: %d tasks scored, %d test predictions (%d errors), "
        "%d old values cleared, %d updated",
        pid,
        report.scored,
        report.predicted,
        report.test_errors,
        report.cleared,
        report.updated,
    )
    return {"project_id": pid, **report.as_dict()}
