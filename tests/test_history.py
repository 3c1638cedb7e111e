"""The model history file and `robustar-ls history` (no torch needed for either)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustar_ls.cli import main
from robustar_ls.models.history import (
    append_entry,
    history_entry,
    history_path,
    lineage,
    read_history,
)

REPO = Path(__file__).resolve().parents[1]


def _entry(version, parent=None, before=None, after=None, **extra):
    return {
        "version": version,
        "parent_version": parent,
        "created_at": "2026-01-01T00:00:00+00:00",
        "kind": "paired" if parent else "train",
        "before": before,
        "after": after or {"val": 0.9, "test": 0.3},
        "epochs": [{"epoch": 1, "loss": 0.5, "ce": 0.4, "ce_paired": 0.3, "align": 0.1}],
        "annotated": 5 if parent else None,
        "sync": {"added": 2, "updated": 1, "removed": 0} if parent else None,
        **extra,
    }


def test_entry_from_a_checkpoint_payload():
    payload = {
        "version": "v2-b",
        "parent_version": "v1-a",
        "created_at": "t",
        "metrics": {
            "splits": {"val": {"accuracy": 0.95, "n": 20}, "test": {"accuracy": 0.8, "n": 30}},
            "before": {"val": {"accuracy": 0.96, "n": 20}, "test": {"accuracy": 0.3, "n": 30}},
            "history": [{"epoch": 1, "loss": 1.0}],
        },
        "config": {"paired": {"fill": "noise"}, "annotated": 7},
    }
    entry = history_entry(payload, {"sync": {"added": 1}})
    assert entry["after"] == {"val": 0.95, "test": 0.8}
    assert entry["before"] == {"val": 0.96, "test": 0.3}
    assert entry["counts"] == {"val": 20, "test": 30}
    assert (entry["kind"], entry["annotated"], entry["sync"]) == ("paired", 7, {"added": 1})
    assert entry["epochs"] == [{"epoch": 1, "loss": 1.0}]


def test_append_only_and_a_torn_line_is_skipped(tmp_path, caplog):
    ckpt = tmp_path / "model.pt"
    assert read_history(ckpt) == []
    append_entry(ckpt, _entry("v1-a"))
    with history_path(ckpt).open("a") as handle:
        handle.write('{"version": "v2-b", "par')  # a crash mid-line
    append_entry(ckpt, _entry("v3-c", "v1-a"))
    assert history_path(ckpt).name == "model.pt.history.jsonl"
    assert [e["version"] for e in read_history(ckpt)] == ["v1-a", "v3-c"]
    assert "not JSON" in caplog.text


def test_lineage_follows_parents_past_other_runs():
    entries = [
        _entry("v1-a"),
        _entry("v2-b", "v1-a"),
        _entry("v1-x"),  # `train` again over the same path: a new root
        _entry("v3-c", "v2-b"),
    ]
    assert [e["version"] for e in lineage(entries, "v3-c")] == ["v1-a", "v2-b", "v3-c"]
    assert [e["version"] for e in lineage(entries, "v1-x")] == ["v1-x"]
    assert [e["version"] for e in lineage(entries, None)] == ["v1-a", "v2-b", "v3-c"]
    assert lineage([], None) == []
    looped = [_entry("v1-a", "v2-b"), _entry("v2-b", "v1-a")]
    assert len(lineage(looped, "v2-b")) == 2  # a cycle ends, it does not hang


def test_history_command_prints_a_table_and_json(tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    append_entry(ckpt, _entry("v1-a"))
    append_entry(
        ckpt,
        _entry("v2-b", "v1-a", before={"val": 0.9, "test": 0.3}, after={"val": 0.95, "test": 0.8}),
    )
    assert main(["history", "--checkpoint", str(ckpt)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "version", "parent", "created", "kind", "epochs", "annotated", "sync", "loss", "val", "test"
    ]  # fmt: skip
    assert lines[2].split()[:2] == ["v2-b", "v1-a"]
    assert "0.300→0.800" in lines[2] and "+2 ~1 -0" in lines[2] and "0.5000" in lines[2]
    assert main(["history", "--checkpoint", str(ckpt), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["version"] for e in entries] == ["v1-a", "v2-b"]


def test_history_command_without_a_file_is_one_error_line(tmp_path, capsys):
    assert main(["history", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustar-ls history: error: no model history for") and "\n" not in err


def test_history_command_does_not_import_torch(tmp_path):
    ckpt = tmp_path / "model.pt"
    append_entry(ckpt, _entry("v1-a"))
    code = (
        "import sys; from robustar_ls.cli import main; "
        f"main(['history', '--checkpoint', {str(ckpt)!r}, '-q']); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("bad", ["[1, 2]", '{"no": "version"}'])
def test_lines_that_are_not_entries_are_skipped(tmp_path, bad):
    ckpt = tmp_path / "m.pt"
    history_path(ckpt).write_text(bad + "\n")
    assert read_history(ckpt) == []
