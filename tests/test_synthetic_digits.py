"""``make-dataset --kind digits``: scikit-learn's real digits on a class-coloured background."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from robustar_ls.cli import main
from robustar_ls.config import SyntheticConfig
from robustar_ls.data import digits
from robustar_ls.data.digits import (
    DIGIT_PALETTE,
    MissingDependencyError,
    digit_intensity,
    load_digit_images,
)
from robustar_ls.data.masks import MaskStore
from robustar_ls.data.synthetic import image_specs, make_dataset, render, resolve

pytest.importorskip("sklearn")


def _cfg(**kw):
    base = dict(kind="digits", per_class=3, val_per_class=2, test_per_class=2, classes=10, seed=5)
    base.update(kw)
    return SyntheticConfig(**base)


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _specs(split, cfg):
    cfg = resolve(cfg)
    n = {"train": cfg.per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}[split]
    return list(image_specs(split, n, cfg))


def test_layout_sizes_folders_and_metadata(tmp_path):
    summary = make_dataset(tmp_path, _cfg(spurious_fraction=0.5, bias=0.8))
    assert summary["classes"] == [str(d) for d in range(10)]
    assert summary["images"] == {"train": 30, "val": 20, "test": 20}
    for split, per_class in (("train", 3), ("val", 2), ("test", 2)):
        folders = sorted(p.name for p in (tmp_path / split).iterdir())
        assert folders == [str(d) for d in range(10)]
        for folder in folders:
            files = sorted((tmp_path / split / folder).glob("*.png"))
            assert len(files) == per_class
            for path in files:
                with Image.open(path) as image:
                    assert (image.size, image.mode) == ((32, 32), "RGB")
    manifest = json.loads((tmp_path / "spurious.json").read_text())
    train = sorted(p.relative_to(tmp_path / "train").as_posix() for p in tmp_path.glob("train/*/*"))
    assert sorted(manifest) == train and train[0] == "0/00000.png"
    assert sorted(MaskStore(tmp_path / "oracle_masks").relpaths()) == train  # every image
    saved = json.loads((tmp_path / "dataset.json").read_text())
    assert saved["config"]["kind"] == "digits" and saved["train_status"] == {
        s: list(manifest.values()).count(s) for s in ("aligned", "misaligned", "none")
    }


def test_defaults_and_pools_are_disjoint_real_digits_of_the_class():
    cfg = resolve(SyntheticConfig(kind="digits"))  # all 10 classes by default
    assert (cfg.per_class, cfg.val_per_class, cfg.test_per_class) == (100, 30, 40)
    assert resolve(SyntheticConfig()).classes == 4  # the shape kinds keep theirs
    assert resolve(SyntheticConfig(kind="digits", classes=3)).classes == 3
    _, labels = load_digit_images()
    used = {}
    for split in ("train", "val", "test"):
        specs = [spec for _, spec, _ in _specs(split, cfg)]
        used[split] = [spec.digit for spec in specs]
        assert len(set(used[split])) == len(used[split])  # no digit twice in a split
        assert all(labels[spec.digit] == spec.label for spec in specs)
    assert not set(used["train"]) & set(used["val"])
    assert not set(used["train"]) & set(used["test"])
    assert not set(used["val"]) & set(used["test"])
    assert len(used["train"]) == 1000 and len(used["test"]) == 400


def test_test_pool_does_not_move_with_the_training_count():
    a = [spec.digit for _, spec, _ in _specs("test", _cfg(per_class=3))]
    b = [spec.digit for _, spec, _ in _specs("test", _cfg(per_class=90))]
    assert a == b


@pytest.mark.parametrize("split", ["train", "val"])
def test_aligned_misaligned_none_follow_fraction_and_bias(split):
    cfg = _cfg(per_class=100, val_per_class=60, test_per_class=0, spurious_fraction=0.6, bias=0.8)
    rows = _specs(split, cfg)
    statuses = [status for _, _, status in rows]
    n = len(rows)
    coloured = n - statuses.count("none")
    assert abs(coloured / n - 0.6) < 0.06
    assert abs(statuses.count("aligned") / coloured - 0.8) < 0.06
    for _, spec, status in rows:
        if status == "none":
            assert spec.feature is None
        elif status == "aligned":
            assert spec.feature == spec.label
        else:
            assert spec.feature is not None and spec.feature != spec.label


def test_test_colours_are_drawn_independently_of_the_class():
    rows = _specs("test", _cfg(per_class=1, val_per_class=0, test_per_class=60))
    assert {status for _, _, status in rows} == {"ood"}
    features = np.array([spec.feature for _, spec, _ in rows])
    labels = np.array([spec.label for _, spec, _ in rows])
    assert np.mean(features == labels) < 0.2  # chance is 0.1; aligned would be 1.0
    assert set(features.tolist()) == set(range(10))  # every colour is used
    # each class sees several colours, and each colour several classes
    assert all(len(set(features[labels == c].tolist())) >= 5 for c in range(10))


def test_oracle_mask_is_the_background_not_the_stroke(tmp_path):
    cfg = _cfg(per_class=4, spurious_fraction=1.0, bias=1.0)
    make_dataset(tmp_path, cfg)
    store = MaskStore(tmp_path / "oracle_masks")
    for rel, spec, _ in _specs("train", cfg)[::7]:
        image, mask = render(spec)
        intensity = digit_intensity(spec)
        assert mask.mean() > 0.5  # the background covers most of the image
        assert not mask[intensity > 0.5].any()  # the stroke is not spurious
        assert mask[intensity < 0.1].all()  # everything far from the stroke is
        written = store.read(rel, size=(32, 32))
        assert np.array_equal(written > 0, mask)
        pixels = image / 255.0
        assert np.allclose(pixels[mask].mean(0), DIGIT_PALETTE[spec.feature], atol=0.06)
        assert pixels[~mask].min(axis=1).mean() > 0.6  # the stroke is light
        with Image.open(tmp_path / "train" / rel) as saved:
            assert np.array_equal(np.asarray(saved), image)


def test_changing_the_colour_changes_the_background_only_and_neutral_is_black():
    cfg = _cfg(per_class=3, spurious_fraction=1.0, bias=1.0)
    for _, spec, _ in _specs("train", cfg)[::5]:
        image, mask = render(spec)
        for other in (None, (spec.feature + 3) % 10):
            changed, other_mask = render(replace(spec, feature=other))
            assert np.array_equal(mask, other_mask)
            diff = np.any(image != changed, axis=-1)
            assert diff.any() and not np.any(diff & ~mask)
            if other is None:
                assert (changed[mask] / 255.0).mean() < 0.06  # black (+ mild noise)


def test_same_seed_same_bytes_other_seed_differs_and_jitter(tmp_path):
    make_dataset(tmp_path / "a", _cfg(size=16))
    make_dataset(tmp_path / "b", _cfg(size=16))
    make_dataset(tmp_path / "c", _cfg(size=16, seed=6))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    specs = [spec for _, spec, _ in _specs("train", _cfg(per_class=30))]
    assert len({spec.shift for spec in specs}) > 5
    assert max(abs(v) for spec in specs for v in spec.shift) == 2


def test_full_spurious_fraction_with_a_bias_below_one_works_for_every_kind(tmp_path):
    for kind in ("patch", "background", "digits"):
        cfg = SyntheticConfig(
            kind=kind,
            size=16,
            per_class=20,
            val_per_class=1,
            test_per_class=1,
            classes=3,
            spurious_fraction=1.0,
            bias=0.99,
        )
        summary = make_dataset(tmp_path / kind, cfg)
        status = summary["train_status"]
        assert status["none"] == 0 and status["aligned"] >= 55 and sum(status.values()) == 60


def test_too_many_images_per_class_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"174 images of digit '8'.*at most 104"):
        make_dataset(tmp_path, _cfg(per_class=150, val_per_class=None, test_per_class=None))
    with pytest.raises(ValueError, match="--val-per-class 200"):
        make_dataset(tmp_path, _cfg(val_per_class=200))
    with pytest.raises(ValueError, match="between 2 and 10"):
        make_dataset(tmp_path, _cfg(classes=11))
    assert not list(tmp_path.rglob("*.png"))
    # fewer classes: the fewest digits among them bound the counts (digit 2: 177)
    with pytest.raises(ValueError, match=r"177 images of digit '2'"):
        make_dataset(tmp_path, _cfg(classes=3, per_class=170, val_per_class=5, test_per_class=5))
    make_dataset(tmp_path, _cfg(classes=3, per_class=1, val_per_class=1, test_per_class=175))


def test_the_cli_refuses_too_many_in_one_line(tmp_path, capsys):
    code = main(["make-dataset", str(tmp_path / "d"), "--kind", "digits", "--per-class", "500"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at most 104" in err


def test_missing_scikit_learn_says_what_to_install(tmp_path, monkeypatch, capsys):
    load_digit_images.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(MissingDependencyError, match=r"robustar-ls\[digits\]"):
            make_dataset(tmp_path / "a", _cfg())
        assert main(["make-dataset", str(tmp_path / "b"), "--kind", "digits"]) == 2
        assert 'pip install "robustar-ls[digits]"' in capsys.readouterr().err
        assert isinstance(MissingDependencyError("x"), ImportError)
    finally:
        digits.load_digit_images.cache_clear()
