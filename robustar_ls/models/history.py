"""The model history: one JSON line per checkpoint written, in a file beside the checkpoint.

``model.pt`` keeps ``model.pt.history.jsonl``, appended to (never rewritten) each time a
checkpoint is saved there, so the lineage survives the checkpoint being overwritten. A line::

    {version, parent_version, created_at, checkpoint, kind: train|paired,
     before: {split: accuracy} | null, after: {split: accuracy}, counts: {split: n},
     groups: {before: {split: {worst_group, bias_conflicting, ...}} | null,
              after: {split: {...}} | null} | null,
     saliency_in_masks: {before, after} | null, recipe: rebuild|finetune | null,
     epochs: [{epoch, loss, ...per-epoch terms}], annotated, sync: {added, updated, ...} | null,
     seconds}

``groups`` holds the group metrics (``data/groups.py``) of the splits that have them: a dataset
with ``groups.json`` (``make-dataset``'s); null otherwise. ``saliency_in_masks`` is the share of
the model's saliency on the spurious pixels of the masks it trained with, before and after
(``train/mask_attention.py``); ``recipe`` the recipe of a paired training
(``train/recipe.py``).

Each line is written with one ``write`` under an exclusive ``flock`` and fsynced; a torn last
line (a power cut mid-write) is ended before the next entry, and a reader skips a line it
cannot parse, with a warning. No torch here:
the web page and ``robustar-ls history`` read it without loading a model.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustar_ls.data.groups import groups_before_after

log = logging.getLogger(__name__)

SUFFIX = ".history.jsonl"


def history_path(checkpoint: str | Path) -> Path:
    """``<checkpoint>.history.jsonl``, beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SUFFIX)


def _accuracies(splits: Mapping[str, Any] | None) -> dict[str, float] | None:
    if not splits:
        return None
    return {
        split: float(m["accuracy"]) if isinstance(m, Mapping) else float(m)
        for split, m in splits.items()
    }


def history_entry(payload: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    """The history line of a checkpoint ``payload`` (its metadata: version, metrics, config)."""
    metrics = payload.get("metrics") or {}
    config = payload.get("config") or {}
    splits = metrics.get("splits") or {}
    entry = {
        "version": payload.get("version"),
        "parent_version": payload.get("parent_version"),
        "created_at": payload.get("created_at"),
        "kind": "paired" if "paired" in config else "train",
        "before": _accuracies(metrics.get("before")),
        "after": _accuracies(splits) or {},
        "counts": {
            s: int(m["n"]) for s, m in splits.items() if isinstance(m, Mapping) and "n" in m
        },
        "groups": groups_before_after(metrics.get("before"), splits),
        "saliency_in_masks": metrics.get("saliency_in_masks"),
        "recipe": config.get("recipe"),
        "epochs": [dict(row) for row in metrics.get("history") or []],
        "annotated": config.get("annotated"),
        "sync": None,
        "seconds": None,
    }
    return {**entry, **dict(extra or {})}


def append_entry(checkpoint: str | Path, entry: Mapping[str, Any]) -> Path:
    """Append ``entry`` as one line to the checkpoint's history file; returns the file."""
    path = history_path(checkpoint)
    line = (json.dumps(dict(entry), sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: end it first
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock
    return path


def read_history(checkpoint: str | Path) -> list[dict[str, Any]]:
    """Every entry of the checkpoint's history, oldest first ([] when there is no file)."""
    path = history_path(checkpoint)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON (torn write?); skipped", path, number)
            continue
        if isinstance(entry, dict) and entry.get("version"):
            entries.append(entry)
    return entries


def lineage(entries: list[dict[str, Any]], version: str | None) -> list[dict[str, Any]]:
    """The entries from the root to ``version``, following ``parent_version`` (oldest first).

    Entries of other lineages (a checkpoint trained anew over the same path) are left out;
    ``version`` None or unknown: the lineage of the newest entry.
    """
    by_version = {e["version"]: e for e in entries}  # a repeated version: its latest line
    if version not in by_version:
        version = entries[-1]["version"] if entries else None
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    while version in by_version and version not in seen:
        seen.add(version)
        chain.append(by_version[version])
        version = by_version[version].get("parent_version")
    return chain[::-1]
