"""robustar_ls.files: atomic writes, locks and safe names."""

from __future__ import annotations

import os

import pytest

from robustar_ls import files


def test_atomic_write_creates_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "x.bin"
    files.atomic_write_bytes(path, b"one")
    files.atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["x.bin"]


@pytest.mark.parametrize("durable", [True, False])
def test_durable_write_is_fsynced_then_replaced(tmp_path, monkeypatch, durable):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(
        files.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))
    )
    files.atomic_write_bytes(tmp_path / "x", b"data", durable=durable)
    assert calls == (["fsync", "replace", "fsync"] if durable else ["replace"])


def test_crash_during_write_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "x"
    path.write_bytes(b"old")

    def crash(*args):
        raise OSError("disk died")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk died"):
        files.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_try_lock_is_exclusive_until_unlocked(tmp_path):
    lock = tmp_path / "job.lock"
    fd = files.try_lock(lock)
    assert fd is not None
    assert files.try_lock(lock) is None  # flock is per open file: a second open is refused
    files.unlock(fd)
    again = files.try_lock(lock)
    assert again is not None
    files.unlock(again)


def test_exclusive_lock_holds_while_inside(tmp_path):
    lock = tmp_path / "sub" / ".sync.lock"
    with files.exclusive_lock(lock):
        assert files.try_lock(lock) is None
    fd = files.try_lock(lock)
    assert fd is not None
    files.unlock(fd)


def test_safe_name():
    assert files.safe_name("v3-1a2b.c_d") == "v3-1a2b.c_d"
    assert files.safe_name("a/b:c d") == "a_b_c_d"
    assert files.safe_name("") == "unversioned"
