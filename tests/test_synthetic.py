from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from robustar_ls.config import SyntheticConfig
from robustar_ls.data.masks import MaskStore
from robustar_ls.data.synthetic import image_specs, make_dataset, render


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _cfg(**kw):
    base = dict(size=16, per_class=6, val_per_class=2, test_per_class=3, classes=3, seed=5)
    base.update(kw)
    return SyntheticConfig(**base)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    make_dataset(tmp_path / "a", _cfg())
    make_dataset(tmp_path / "b", _cfg())
    make_dataset(tmp_path / "c", _cfg(seed=6))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize("kind", ["patch", "background"])
def test_changing_the_feature_changes_pixels_inside_the_oracle_mask_only(kind):
    cfg = _cfg(kind=kind)
    for _, spec, _ in image_specs("train", 4, cfg):
        image, mask = render(spec)
        for other in range(cfg.classes):
            if other == spec.feature:
                continue
            changed, other_mask = render(replace(spec, feature=other))
            assert np.array_equal(mask, other_mask)
            diff = np.any(image != changed, axis=-1)
            assert diff.any(), "a different feature must change some pixels"
            assert not np.any(diff & ~mask), "pixels outside the oracle mask changed"


def test_layout_manifest_and_split_statistics(tmp_path):
    cfg = _cfg(per_class=40, bias=0.75, spurious_fraction=0.5)
    make_dataset(tmp_path, cfg)
    manifest = json.loads((tmp_path / "spurious.json").read_text())
    train = sorted(
        p.relative_to(tmp_path / "train").as_posix() for p in (tmp_path / "train").rglob("*.png")
    )
    assert sorted(manifest) == train and len(train) == 120
    assert train[0] == "circle/00000.png"
    counts = {s: list(manifest.values()).count(s) for s in ("aligned", "misaligned", "none")}
    assert 40 <= counts["none"] <= 80  # about half carry no feature
    assert counts["aligned"] > counts["misaligned"] > 0
    store = MaskStore(tmp_path / "oracle_masks")
    assert sorted(store.relpaths()) == train
    for split, n in (("val", 6), ("test", 9)):
        assert len(list((tmp_path / split).rglob("*.png"))) == n


def test_patch_colour_carries_the_class_in_train_but_not_in_test(tmp_path):
    cfg = _cfg(per_class=30, test_per_class=30, bias=1.0)
    specs = {split: list(image_specs(split, 30, cfg)) for split in ("train", "test")}
    assert all(spec.feature == spec.label for _, spec, _ in specs["train"])
    agree = np.mean([spec.feature == spec.label for _, spec, _ in specs["test"]])
    assert agree < 0.6  # out-of-domain: feature independent of the class (chance 1/3)


def test_oracle_mask_matches_written_image(tmp_path):
    make_dataset(tmp_path, _cfg(kind="patch"))
    rel = "square/00006.png"
    mask = MaskStore(tmp_path / "oracle_masks").read(rel, size=(16, 16))
    assert 0 < mask.sum() < 16 * 16 / 4
    assert Image.open(tmp_path / "train" / rel).size == (16, 16)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind"):
        make_dataset(tmp_path, _cfg(kind="texture"))
    with pytest.raises(ValueError, match="--classes"):
        make_dataset(tmp_path, _cfg(classes=9))
    with pytest.raises(ValueError, match="--bias"):
        make_dataset(tmp_path, _cfg(bias=1.5))


def test_defaults_aligned_noise_free_patch_at_a_third_of_the_images(tmp_path):
    """The benchmark's cheap structural facts: at spurious fraction 0.3 about 30% of the
    training images carry the feature, every one aligned with its class (bias 1.0 by default),
    and the patch is its class's colour exactly (no pixel noise), a clean cue from epoch 1."""
    from robustar_ls.data.synthetic import PALETTE, SHAPES, patch_mask, patch_size, shape_mask

    cfg = SyntheticConfig(per_class=100, val_per_class=0, test_per_class=0, spurious_fraction=0.3)
    assert cfg.bias == 1.0
    statuses = [status for _, _, status in image_specs("train", 100, cfg)]
    share = 1 - statuses.count("none") / len(statuses)
    assert 0.24 <= share <= 0.36 and "misaligned" not in statuses
    patched = [spec for _, spec, status in image_specs("train", 20, cfg) if status == "aligned"]
    assert patched
    for spec in patched[:5]:
        image, mask = render(spec)
        assert np.array_equal(mask, patch_mask(cfg.size, spec.corner))
        assert mask.sum() == patch_size(cfg.size) ** 2 >= (cfg.size // 5) ** 2
        # a large object may cover a corner of the patch: the rest is the class's colour
        obj = shape_mask(SHAPES[spec.label], cfg.size, spec.center, spec.radius, spec.angle)
        assert (mask & obj).sum() <= 0.05 * mask.sum()
        expected = (PALETTE[spec.label] * 255 + 0.5).astype(np.uint8)
        assert np.all(image[mask & ~obj] == expected)


def test_spurious_fraction_one_puts_the_feature_on_every_training_image():
    cfg = _cfg(kind="background", per_class=20, spurious_fraction=1.0, bias=1.0)
    assert {status for _, _, status in image_specs("train", 20, cfg)} == {"aligned"}


def test_defaults_object_size_and_background_tint(tmp_path):
    """Objects 5-9 px in radius at 32 px, and a background tint of 0.42 + 0.3 x the class's
    colour (the mean over the background of an aligned image, noise averaging out)."""
    from robustar_ls.data.synthetic import PALETTE

    cfg = SyntheticConfig(kind="background", per_class=30, spurious_fraction=1.0)
    specs = [spec for _, spec, _ in image_specs("train", 30, cfg)]
    radii = [spec.radius for spec in specs]
    assert min(radii) >= 5.0 and max(radii) <= 9.0 and max(radii) - min(radii) > 3.0
    for spec in specs[:: len(specs) // 4]:
        image, mask = render(spec)
        mean = image[mask].mean(axis=0) / 255
        assert np.allclose(mean, 0.42 + 0.3 * PALETTE[spec.label], atol=0.03)


def test_training_images_per_class_default_to_the_kind_s_calibrated_count(tmp_path):
    """Without --per-class, background gets more training images than patch (its shapes need
    more steps to be learned in 10 epochs); an explicit count is kept for both kinds."""
    from robustar_ls.data.synthetic import DEFAULT_PER_CLASS, resolve

    assert DEFAULT_PER_CLASS["background"] > DEFAULT_PER_CLASS["patch"]
    for kind in ("patch", "background"):
        assert resolve(SyntheticConfig(kind=kind)).per_class == DEFAULT_PER_CLASS[kind]
        assert resolve(SyntheticConfig(kind=kind, per_class=7)).per_class == 7
    cfg = SyntheticConfig(kind="background", size=16, classes=2, val_per_class=0)
    summary = make_dataset(tmp_path, replace(cfg, test_per_class=0, per_class=None))
    assert summary["images"]["train"] == 2 * DEFAULT_PER_CLASS["background"]
    assert summary["config"]["per_class"] == DEFAULT_PER_CLASS["background"]
