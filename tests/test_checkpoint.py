from __future__ import annotations

import pytest
import torch

from robustar_ls import files as files_mod
from robustar_ls.models.checkpoint import (
    CheckpointError,
    Provenance,
    load_checkpoint,
    read_version,
    save_checkpoint,
)
from robustar_ls.models.history import read_history
from robustar_ls.models.zoo import create_classifier

CLASSES = ["a", "b", "c"]


def _model(seed=0, classes=3, width=4):
    torch.manual_seed(seed)
    return create_classifier("resnet18_small", classes, width=width)


def _save(path, model, **provenance):
    return save_checkpoint(
        path,
        model,
        arch="resnet18_small",
        classes=CLASSES,
        image_size=16,
        width=4,
        provenance=Provenance(**provenance),
    )


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    model = _model()
    version = _save(tmp_path / "m.pt", model, metrics={"test": 0.5}, config={"x": 1})
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.version == version and version.startswith("v1-")
    assert loaded.classes == CLASSES and loaded.arch == "resnet18_small"
    assert loaded.image_size == 16 and loaded.width == 4
    assert loaded.metrics == {"test": 0.5} and loaded.config == {"x": 1}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.model(x))
    assert read_version(tmp_path / "m.pt") == version


def test_version_changes_with_weights_and_counts_up(tmp_path):
    v1 = _save(tmp_path / "a.pt", _model(0))
    v_same = _save(tmp_path / "b.pt", _model(0))
    v2 = _save(tmp_path / "c.pt", _model(1), parent_version=v1)
    assert v1 == v_same  # same weights, same version
    assert v2.startswith("v2-") and v2.split("-")[1] != v1.split("-")[1]
    assert load_checkpoint(tmp_path / "c.pt").parent_version == v1


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bare_state_dict_needs_arch_and_classes(tmp_path, prefix):
    model = _model()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_checkpoint(tmp_path / "bare.pt")
    loaded = load_checkpoint(tmp_path / "bare.pt", arch="resnet18_small", classes=CLASSES, width=4)
    assert loaded.version.startswith("v0-")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.model(x))


def test_wrong_arch_is_named(tmp_path):
    torch.save(create_classifier("mobilenet_v3_small", 3).state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"m\.pt does not match architecture 'resnet18'"):
        load_checkpoint(tmp_path / "m.pt", arch="resnet18", classes=CLASSES)


def test_arch_disagreeing_with_file_is_refused(tmp_path):
    _save(tmp_path / "m.pt", _model())
    with pytest.raises(CheckpointError, match="trained as 'resnet18_small'"):
        load_checkpoint(tmp_path / "m.pt", arch="resnet50")


def test_wrong_class_count_is_named(tmp_path):
    torch.save(_model(classes=5).state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="number of classes"):
        load_checkpoint(tmp_path / "m.pt", arch="resnet18_small", classes=CLASSES, width=4)


def test_classes_disagreeing_with_dataset(tmp_path):
    _save(tmp_path / "m.pt", _model())
    with pytest.raises(CheckpointError, match="classes"):
        load_checkpoint(tmp_path / "m.pt", classes=["x", "y", "z"])


def test_truncated_file(tmp_path):
    _save(tmp_path / "m.pt", _model())
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"t\.pt is not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "t.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"\x89PNG\r\n\x1a\n not a checkpoint")
    with pytest.raises(CheckpointError, match="x.pt"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="neither a robustar-ls checkpoint nor a state_dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_crash_during_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    old_version = _save(path, _model(0))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk died")

    monkeypatch.setattr(files_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk died"):
        _save(path, _model(1), parent_version=old_version)
    assert path.read_bytes() == before
    assert load_checkpoint(path).version == old_version
    # no temp file left behind; the history keeps the old version only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.history.jsonl"]
    assert [e["version"] for e in read_history(path)] == [old_version]
