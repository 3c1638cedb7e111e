"""Group accuracies for datasets that know each image's cue: the metrics the field reports.

A dataset made by ``robustar-ls make-dataset`` has ``groups.json`` beside its splits::

    {split: {relpath: cue}}   # cue: the class folder name whose colour the spurious
                              # feature shows; null when the image carries no feature

A group is (true class, cue). From per-image predictions, per split:

- ``worst_group``: the lowest accuracy over the groups with at least ``MIN_GROUP_SIZE`` images
  on that split (``worst_group_of``: that group as ``[class, cue]``; ``groups_counted``: how
  many groups were large enough);
- ``bias_conflicting``: accuracy over the images whose cue is present and differs from the true
  class (``n_bias_conflicting`` of them); ``bias_aligned``: cue present and equal to the class.

A metric without images to measure it is left out (e.g. ``bias_conflicting`` on a split whose
features all agree with the class); a dataset without ``groups.json`` gets no group metric at
all, and an image the file does not list is left out of the groups. No torch here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GROUPS_FILE = "groups.json"
MIN_GROUP_SIZE = 5
# the keys group_metrics may add to a split's metrics
GROUP_KEYS = (
    "worst_group",
    "worst_group_of",
    "groups_counted",
    "bias_conflicting",
    "n_bias_conflicting",
    "bias_aligned",
    "n_bias_aligned",
)

Cues = Mapping[str, str | None]  # relpath -> cue class name (None: no feature)


def load_groups(root: str | Path) -> dict[str, dict[str, str | None]] | None:
    """``<root>/groups.json`` (``{split: {relpath: cue}}``), or None when there is none or it
    cannot be read (a warning: the group metrics are then left out, evaluation goes on)."""
    path = Path(root) / GROUPS_FILE
    if not path.is_file():
        return None
    try:
        groups = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s); no group metrics", path, err)
        return None
    if not isinstance(groups, dict) or not all(
        isinstance(cues, dict) and all(c is None or isinstance(c, str) for c in cues.values())
        for cues in groups.values()
    ):
        log.warning("%s is not {split: {relpath: cue or null}}; no group metrics", path)
        return None
    return groups


def group_metrics(
    true: Sequence[str],
    predicted: Sequence[str],
    cues: Sequence[str | None],
    min_size: int = MIN_GROUP_SIZE,
) -> dict[str, Any]:
    """Worst-group, bias-conflicting and bias-aligned accuracy of one split's images.

    ``true``, ``predicted`` and ``cues`` are per image (class names; cue None = no feature).
    Returns only the metrics that have images to measure them (``{}`` for none).
    """
    if not len(true) == len(predicted) == len(cues):
        raise ValueError(
            f"one true class, prediction and cue per image: got {len(true)}, {len(predicted)}, "
            f"{len(cues)}"
        )
    tallies: dict[tuple[str, str | None], list[int]] = {}
    conflicting, aligned = [0, 0], [0, 0]
    for label, guess, cue in zip(true, predicted, cues, strict=True):
        ok = int(label == guess)
        tally = tallies.setdefault((label, cue), [0, 0])
        tally[0] += ok
        tally[1] += 1
        if cue is not None:
            side = aligned if cue == label else conflicting
            side[0] += ok
            side[1] += 1
    out: dict[str, Any] = {}
    counted = {group: c / n for group, (c, n) in tallies.items() if n >= min_size}
    if counted:
        # the lowest accuracy; ties go to the first group by (class, cue) name
        worst = min(sorted(counted, key=lambda g: (g[0], g[1] or "")), key=counted.__getitem__)
        out["worst_group"] = counted[worst]
        out["worst_group_of"] = [worst[0], worst[1]]
        out["groups_counted"] = len(counted)
    for name, (correct, n) in (("bias_conflicting", conflicting), ("bias_aligned", aligned)):
        if n:
            out[name] = correct / n
            out[f"n_{name}"] = n
    return out


def split_group_metrics(
    relpaths: Sequence[str],
    labels: Sequence[int],
    predictions: Sequence[int],
    classes: Sequence[str],
    cues: Cues,
    min_size: int = MIN_GROUP_SIZE,
) -> dict[str, Any]:
    """:func:`group_metrics` of one split from class indices (``classes[i]`` its name); images
    ``cues`` does not list are left out."""
    rows = [
        (classes[label], classes[guess], cues[rel])
        for rel, label, guess in zip(relpaths, labels, predictions, strict=True)
        if rel in cues
    ]
    if not rows:
        return {}
    true, predicted, cue = zip(*rows, strict=True)
    return group_metrics(true, predicted, cue, min_size)


def only_group_metrics(
    splits: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any]] | None:
    """``{split: {group metric: value}}`` out of ``{split: metrics}`` (evaluate_splits'
    output, a checkpoint's); None when no split has one."""
    if not splits:
        return None
    found = {
        split: {key: m[key] for key in GROUP_KEYS if key in m}
        for split, m in splits.items()
        if isinstance(m, Mapping)
    }
    found = {split: metrics for split, metrics in found.items() if metrics}
    return found or None


def groups_before_after(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> dict[str, dict[str, dict[str, Any]] | None] | None:
    """``{before, after}`` (each ``{split: group metrics}`` or None) out of two
    ``evaluate_splits`` results; None when neither has a group metric."""
    found = {"before": only_group_metrics(before), "after": only_group_metrics(after)}
    return found if any(found.values()) else None


def change_text(groups: Mapping[str, Any] | None, split: str) -> str:
    """``worst group 0.100→0.400, bias-conflicting 0.200→0.500`` for ``split`` out of
    :func:`groups_before_after`'s result ("" when the split has none)."""
    if not groups:
        return ""
    before = (groups.get("before") or {}).get(split) or {}
    after = (groups.get("after") or {}).get(split) or {}
    parts = []
    for key, name in (("worst_group", "worst group"), ("bias_conflicting", "bias-conflicting")):
        if key in after:
            was = f"{before[key]:.3f}→" if key in before else ""
            parts.append(f"{name} {was}{after[key]:.3f}")
    return ", ".join(parts)


def group_text(metrics: Mapping[str, Any]) -> str:
    """``worst group 0.200 (square, cue circle), bias-conflicting 0.350 (n=40)`` from one
    split's metrics ("" without group metrics)."""
    parts = []
    if "worst_group" in metrics:
        of = metrics.get("worst_group_of") or [None, None]
        cue = f"cue {of[1]}" if len(of) > 1 and of[1] is not None else "no cue"
        parts.append(f"worst group {metrics['worst_group']:.3f} ({of[0]}, {cue})")
    for key, name in (("bias_conflicting", "bias-conflicting"), ("bias_aligned", "bias-aligned")):
        if key in metrics:
            parts.append(f"{name} {metrics[key]:.3f} (n={metrics.get(f'n_{key}', '?')})")
    return ", ".join(parts)
