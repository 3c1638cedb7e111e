"""``robustar-ls history``: the versions a checkpoint went through, as a table or JSON."""

from __future__ import annotations

import argparse
from typing import Any

from robustar_ls.cli.options import UserError, print_json

NAME = "history"
HELP = "the model versions written to a checkpoint: parent, accuracy before/after, loss, sync"
DESCRIPTION = (
    "Reads <checkpoint>.history.jsonl, the append-only log that train, sync-train and Label "
    "Studio's Start Training extend each time they write the checkpoint (the lineage survives "
    "the checkpoint being overwritten). Oldest first; --json prints the entries as they are."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the checkpoint whose history to print")


def run(args: argparse.Namespace) -> int:
    from robustar_ls.models.history import history_path, read_history

    entries = read_history(args.checkpoint)
    if not entries:
        raise UserError(
            f"no model history for {args.checkpoint} ({history_path(args.checkpoint)} is "
            "missing or empty); it is written whenever train or sync-train saves a checkpoint"
        )
    if args.json:
        print_json(entries)
    else:
        print(format_table(entries))
    return 0


def _accuracy(entry: dict[str, Any], split: str) -> str:
    before = (entry.get("before") or {}).get(split)
    after = (entry.get("after") or {}).get(split)
    if after is None:
        return "-"
    return f"{before:.3f}→{after:.3f}" if before is not None else f"{after:.3f}"


def _group(entry: dict[str, Any], split: str, key: str) -> str:
    """A group metric of ``split`` (``before→after`` when the run evaluated before), or "-"."""
    groups = entry.get("groups") or {}
    before = ((groups.get("before") or {}).get(split) or {}).get(key)
    after = ((groups.get("after") or {}).get(split) or {}).get(key)
    if after is None:
        return "-"
    return f"{before:.3f}→{after:.3f}" if before is not None else f"{after:.3f}"


GROUP_COLUMNS = (("worst_group", "worst-group"), ("bias_conflicting", "bias-conflicting"))


def group_columns(entries: list[dict[str, Any]], split: str = "test") -> list[tuple[str, str]]:
    """``(key, header)`` of the group metrics some entry has on ``split`` (``data/groups.py``)."""
    return [
        (key, f"{split} {name}")
        for key, name in GROUP_COLUMNS
        if any(_group(e, split, key) != "-" for e in entries)
    ]


def _sync(entry: dict[str, Any]) -> str:
    sync = entry.get("sync")
    if not sync:
        return "-"
    return f"+{sync.get('added', 0)} ~{sync.get('updated', 0)} -{sync.get('removed', 0)}"


def _loss(entry: dict[str, Any]) -> str:
    epochs = entry.get("epochs") or []
    loss = epochs[-1].get("loss") if epochs else None
    return f"{loss:.4f}" if isinstance(loss, int | float) else "-"


def split_order(entries: list[dict[str, Any]]) -> list[str]:
    """The splits of the entries: train, val, test first, then any other by name."""
    found = {split for entry in entries for split in entry.get("after") or {}}
    known = [s for s in ("train", "val", "test") if s in found]
    return known + sorted(found - set(known))


def format_table(entries: list[dict[str, Any]]) -> str:
    """One row per entry: version, parent, created, kind, epochs, annotated, sync, last loss,
    then each split's accuracy (``before→after`` when the run evaluated before), then test's
    worst-group and bias-conflicting accuracy where the dataset knows each image's cue."""
    splits = split_order(entries)
    groups = group_columns(entries)
    header = ["version", "parent", "created", "kind", "epochs", "annotated", "sync", "loss"]
    rows = [header + splits + [name for _, name in groups]]
    for e in entries:
        annotated = e.get("annotated")
        rows.append(
            [
                str(e["version"]),
                str(e.get("parent_version") or "-"),
                str(e.get("created_at") or "-"),
                str(e.get("kind") or "-"),
                str(len(e.get("epochs") or [])),
                "-" if annotated is None else str(annotated),
                _sync(e),
                _loss(e),
                *(_accuracy(e, s) for s in splits),
                *(_group(e, "test", key) for key, _ in groups),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
