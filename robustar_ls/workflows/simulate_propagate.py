"""``simulate --propagate``: the simulated annotator's masks train the learned segmenter, whose
confident masks then pair the images nobody painted (issue 12's propagation, simulated).

The segmenter learns from every *picked* image: the painted ones with their reference mask,
the picked images without the feature as all-zero masks (the annotator reviewed them and
painted nothing: a negative). Those picked images are the expert's and are never predicted;
every other training image gets the segmenter's mask when its confidence passes ``threshold``.

**Review sample** (:func:`with_review_sample`): influence puts images that show the shortcut
first, so its top 5 % can hold no featureless image at all; a segmenter that never saw one then
marks, e.g., every plain background as spurious. With propagation, a share of the budget
(``review_share``, default :data:`DEFAULT_REVIEW_SHARE`) goes instead to a seeded random sample
of the other images, as an expert reviewing a few random images and submitting those with
nothing spurious (a Label Studio negative). They count against the budget like every pick.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.images import displayed_size
from robustar_ls.data.masks import MaskStore

DEFAULT_REVIEW_SHARE = 0.25


def with_review_sample(ranking: Sequence[str], picks: int, share: float, seed: int) -> list[str]:
    """``ranking`` whose first ``picks`` end with ``round(share x picks)`` images drawn (seeded)
    from the rest of the ranking in place of the lowest-ranked picks; the rest follows."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"review share must be within [0, 1], got {share}")
    review = min(int(round(share * picks)), picks)
    if review == 0:
        return list(ranking)
    kept = list(ranking[: picks - review])
    rest = list(ranking[picks - review :])
    random.Random(seed).shuffle(rest)
    return kept + rest


def simulated_propagation(
    data: ImageFolderSplits,
    masks_root: Path,
    picked: Iterable[str],
    annotated: set[str],
    threshold: float,
    folder: Path,
    status: dict[str, str] | None = None,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """(relpath → propagated mask file under ``folder``, the propagation summary).

    With ``status`` (``spurious.json``) the summary also says how much the segmenter marks
    where there is nothing to mark (:func:`false_positive_area`)."""
    from robustar_ls.train.propagate import propagate_dataset, write_propagated
    from robustar_ls.train.segmenter import train_segmenter

    if not annotated:
        return {}, {"propagated": 0, "segmenter_version": None, "threshold": threshold}
    paths = {s.relpath: s.path for s in data.splits["train"]}
    reference, expert = MaskStore(masks_root), MaskStore(folder / "expert")
    picked = list(picked)
    for rel in picked:
        if rel in annotated:
            expert.write(rel, reference.read(rel))
        else:
            width, height = displayed_size(paths[rel])
            expert.write(rel, np.zeros((height, width), bool))
    seg = train_segmenter(data, expert)
    result = propagate_dataset(seg, data, expert, threshold=threshold)
    written = write_propagated(result, MaskStore(folder / "propagated"))
    # the segmenter lives in memory only: no file, no version
    summary = {**result.summary(), "segmenter_version": None, "trained_on": len(picked)}
    if status is not None:
        summary["false_positive_area"] = false_positive_area(result.masks, status, set(picked))
    return written, summary


def false_positive_area(
    masks: dict[str, np.ndarray], status: dict[str, str], picked: set[str]
) -> float | None:
    """Mean share of the pixels marked spurious on the unpicked images without the feature
    (``status`` "none"; an image left without a mask counts 0); None without such images."""
    clean = [rel for rel, s in status.items() if s == "none" and rel not in picked]
    if not clean:
        return None
    return round(sum(float(masks[r].mean()) if r in masks else 0.0 for r in clean) / len(clean), 4)
