from __future__ import annotations

import logging
import threading

import pytest
import torch
from backend_support import CLASSES, save_tiny_checkpoint

from robustar_ls.backend.model_holder import ModelHolder
from robustar_ls.models.checkpoint import CheckpointError

tiny_checkpoint = save_tiny_checkpoint


def test_initial_load_and_no_reload_while_unchanged(tmp_path):
    version = tiny_checkpoint(tmp_path / "m.pt")
    holder = ModelHolder(tmp_path / "m.pt", device="cpu")
    first = holder.current()
    assert first.version == version and first.classes == CLASSES and first.image_size == 16
    assert holder.current() is first and holder.reloads == 0


def test_new_checkpoint_is_picked_up_on_next_call(tmp_path):
    path = tmp_path / "m.pt"
    v1 = tiny_checkpoint(path)
    holder = ModelHolder(path, device="cpu")
    old = holder.current()
    v2 = tiny_checkpoint(path, seed=1, parent=v1)
    assert v2 != v1
    fresh = holder.current()
    assert fresh.version == v2 and holder.reloads == 1
    assert old.version == v1  # a request holding the old model keeps a complete old model
    x = torch.zeros(1, 3, 16, 16)
    assert old.model(x).shape == fresh.model(x).shape == (1, 3)


def test_truncated_file_keeps_old_model_and_logs_once(tmp_path, caplog):
    path = tmp_path / "m.pt"
    v1 = tiny_checkpoint(path)
    holder = ModelHolder(path, device="cpu")
    holder.current()
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a non-atomic writer, caught mid-write
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert holder.current().version == v1
    errors = [r for r in caplog.records if "cannot be loaded" in r.getMessage()]
    assert len(errors) == 1 and v1 in errors[0].getMessage()
    assert holder.last_error and "truncated" in holder.last_error
    v2 = tiny_checkpoint(path, seed=2, parent=v1)
    assert holder.current().version == v2 and holder.last_error is None


def test_deleted_file_keeps_serving(tmp_path):
    path = tmp_path / "m.pt"
    v1 = tiny_checkpoint(path)
    holder = ModelHolder(path, device="cpu")
    holder.current()
    path.unlink()
    assert holder.current().version == v1
    assert "does not exist" in holder.last_error


def test_unusable_initial_checkpoint_raises(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        ModelHolder(tmp_path / "bad.pt", device="cpu").load_initial()
    with pytest.raises(CheckpointError, match="does not exist"):
        ModelHolder(tmp_path / "missing.pt", device="cpu").load_initial()


def test_prepare_runs_before_publication(tmp_path):
    path = tmp_path / "m.pt"
    tiny_checkpoint(path)
    seen = []
    holder = ModelHolder(path, device="cpu", prepare=lambda s: s.extras.update(tag=s.version))
    served = holder.current()
    seen.append(served.extras["tag"])
    tiny_checkpoint(path, seed=3, parent=served.version)
    fresh = holder.current()
    assert fresh.extras["tag"] == fresh.version != seen[0]


def test_concurrent_requests_during_reload_see_whole_models(tmp_path):
    path = tmp_path / "m.pt"
    v1 = tiny_checkpoint(path)
    holder = ModelHolder(path, device="cpu")
    holder.current()
    v2 = tiny_checkpoint(path, seed=4, parent=v1)
    seen, errors = [], []

    def request():
        try:
            served = holder.current()
            served.model(torch.zeros(1, 3, 16, 16))
            seen.append(served.version)
        except Exception as err:  # noqa: BLE001 - recorded for the assertion
            errors.append(err)

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and set(seen) <= {v1, v2} and holder.reloads == 1
    assert holder.current().version == v2


# -- the last-good copy (a broken checkpoint plus a worker restart) ----------------------------


def test_a_restarted_holder_serves_the_last_good_copy_of_a_broken_checkpoint(tmp_path, caplog):
    path, keep = tmp_path / "m.pt", tmp_path / "last-good"
    v1 = tiny_checkpoint(path)
    ModelHolder(path, device="cpu", last_good_dir=keep).load_initial()
    path.write_bytes(b"garbage, not a checkpoint")
    restarted = ModelHolder(path, device="cpu", last_good_dir=keep)
    with caplog.at_level(logging.ERROR):
        served = restarted.load_initial()
    assert served.version == v1 and restarted.source == "last-good copy"
    assert "last-good copy" in caplog.text and restarted.last_error
    assert restarted.current() is served  # the broken file is not retried on every request
    v2 = tiny_checkpoint(path, seed=3, parent=v1)  # fixed: the checkpoint is served again
    assert restarted.current().version == v2 and restarted.source == "checkpoint"


def test_a_missing_checkpoint_is_served_from_the_copy_too(tmp_path):
    path, keep = tmp_path / "m.pt", tmp_path / "last-good"
    v1 = tiny_checkpoint(path)
    ModelHolder(path, device="cpu", last_good_dir=keep).load_initial()
    path.unlink()
    restarted = ModelHolder(path, device="cpu", last_good_dir=keep)
    assert restarted.load_initial().version == v1
    assert restarted.current().version == v1


def test_no_good_model_ever_loaded_still_refuses(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        ModelHolder(path, device="cpu", last_good_dir=tmp_path / "keep").load_initial()


def test_the_copy_follows_the_newest_good_checkpoint(tmp_path):
    from robustar_ls.backend.last_good import LastGoodStore, servable_version

    path, keep = tmp_path / "m.pt", tmp_path / "last-good"
    v1 = tiny_checkpoint(path)
    holder = ModelHolder(path, device="cpu", last_good_dir=keep)
    holder.load_initial()
    v2 = tiny_checkpoint(path, seed=1, parent=v1)
    assert holder.current().version == v2
    assert LastGoodStore(keep, path).version() == v2
    path.write_bytes(b"broken")
    assert servable_version(path, keep) == v2
    with pytest.raises(CheckpointError):
        servable_version(path, tmp_path / "empty")
