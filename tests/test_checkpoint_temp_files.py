"""Temp files left beside a checkpoint by a killed writer are removed on start."""

from __future__ import annotations

import os
import time

from robustar_ls.files import remove_stale_temp_files


def test_stale_temp_files_go_fresh_ones_and_others_stay(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    stale = tmp_path / ".model.pt.abc123.tmp"
    fresh = tmp_path / ".model.pt.def456.tmp"
    other = tmp_path / ".other.pt.zzz.tmp"
    for p in (stale, fresh, other):
        p.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert remove_stale_temp_files(path) == [stale]
    assert not stale.exists() and fresh.exists() and other.exists() and path.exists()
