from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from segmenter_support import expert_store, make_stripe_dataset

from robustar_ls.cli import main
from robustar_ls.config import SpuriousSegmenterConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore
from robustar_ls.data.tensors import images_to_batch, normalize
from robustar_ls.models.checkpoint import save_checkpoint
from robustar_ls.models.spurious_segmenter import (
    SegmenterFileError,
    choose_size,
    load_spurious_segmenter,
    mask_confidence,
    to_input,
    to_inputs,
)
from robustar_ls.models.zoo import create_classifier
from robustar_ls.train.propagate import propagate_dataset
from robustar_ls.train.segmenter import (
    SegmenterDataError,
    balanced_weights,
    permute_channels,
    train_segmenter,
)
from robustar_ls.train.segmenter_eval import evaluate_segmenter, iou

FAST = SpuriousSegmenterConfig(steps=150, batch_size=8, lr=0.02)


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_stripe_dataset(tmp_path_factory.mktemp("stripes") / "data")


@pytest.fixture(scope="module")
def trained(stripes, tmp_path_factory):
    """A segmenter trained on the first 16 images (8 striped, 8 empty masks)."""
    data = ImageFolderSplits.open(stripes)
    rels = [s.relpath for s in data.splits["train"]][:16]
    store = expert_store(tmp_path_factory.mktemp("expert"), stripes, rels)
    return train_segmenter(data, store, FAST), data


def test_mask_confidence_is_one_for_a_decided_map_and_falls_with_doubt():
    crisp = np.zeros((10, 10), np.float32)
    crisp[:3, :3] = 1.0
    assert mask_confidence(crisp) == pytest.approx(1.0)
    fuzzy = crisp * 0.6
    halo = crisp.copy()
    halo[3:6, :3] = 0.4  # undecided pixels just outside the mask
    assert mask_confidence(fuzzy) == pytest.approx(0.6)
    assert mask_confidence(halo) == pytest.approx(9 / (9 + 9 * 0.4))
    assert mask_confidence(np.zeros((4, 4))) == 0.0


def test_choose_size_takes_the_median_capped_and_a_multiple_of_four():
    assert choose_size([30, 32, 40], max_size=96) == 32
    assert choose_size([500, 800], max_size=96) == 96
    assert choose_size([18], max_size=96) == 16


def test_learns_a_stripe_pattern_it_was_not_designed_for(trained):
    """No code knows about stripes: IoU far above the all-spurious baseline, few false alarms."""
    seg, data = trained
    scores = evaluate_segmenter(seg, data, MaskStore(data.root / "oracle_masks"))
    assert scores.n == 16 and scores.n_empty == 16  # the 16 training images are excluded
    oracle = MaskStore(data.root / "oracle_masks")
    baseline = np.mean(
        [iou(np.ones_like(m), m) for m in (oracle.read(r) for r in oracle.relpaths()) if m.any()]
    )
    assert baseline < 0.3
    assert scores.iou_mean >= 0.6
    assert scores.false_positive_area <= 0.05


def test_predict_proba_returns_each_images_own_size(trained):
    seg, _ = trained
    images = [np.zeros((20, 30, 3), np.uint8), np.full((50, 40, 3), 200, np.uint8)]
    probs = seg.predict_proba(images)
    assert [p.shape for p in probs] == [(20, 30), (50, 40)]
    assert all(p.dtype == np.float32 and p.min() >= 0 and p.max() <= 1 for p in probs)


def _input_as_before(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """The segmenter's own conversion before it shared the classifier's (kept as the reference)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), resample=Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def test_the_segmenter_input_is_the_classifiers_conversion_bit_for_bit():
    """One image-to-tensor conversion: the segmenter's input is the classifier's batch before its
    normalisation, and equals, bit for bit, what the segmenter computed on its own before."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(16, 16), (20, 12)]]
    arrays[0].reshape(-1)[:256] = np.arange(256)  # every byte value once
    images = [
        *arrays,
        Image.fromarray(rng.integers(0, 256, (33, 40, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8), mode="L"),
        Image.fromarray(rng.integers(0, 256, (9, 31, 4), dtype=np.uint8), mode="RGBA"),
    ]
    for size in (16, 32):
        batch = to_inputs(images, size)
        assert batch.is_contiguous() and batch.dtype == torch.float32
        for image, row in zip(images, batch, strict=True):
            assert torch.equal(row, _input_as_before(image, size))
            assert torch.equal(to_input(image, size), row)
        rgb = [Image.fromarray(im) if isinstance(im, np.ndarray) else im for im in images]
        rgb = [im.convert("RGB") for im in rgb]
        assert torch.equal(normalize(batch), images_to_batch(rgb, size))


def test_save_load_round_trip_keeps_predictions_config_and_counts_versions(trained, tmp_path):
    seg, data = trained
    path = tmp_path / "seg.pt"
    first = seg.save(path)
    loaded = load_spurious_segmenter(path)
    assert loaded.version == first and first.startswith("v1-")
    assert loaded.config == seg.config and loaded.trained_on == seg.trained_on
    image = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict_proba([image])[0], seg.predict_proba([image])[0])
    loaded.parent_version = first
    with torch.no_grad():
        loaded.net.head.bias += 1.0
    assert loaded.save(path).startswith("v2-")
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_load_refuses_missing_truncated_and_classifier_files(tmp_path):
    with pytest.raises(SegmenterFileError, match="does not exist"):
        load_spurious_segmenter(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(SegmenterFileError, match="not a readable"):
        load_spurious_segmenter(tmp_path / "bad.pt")
    model = create_classifier("resnet18_small", 2, width=4)
    save_checkpoint(tmp_path / "clf.pt", model, arch="resnet18_small", classes=["a", "b"],
                    image_size=16, width=4)  # fmt: skip
    with pytest.raises(SegmenterFileError, match="not a robustar-ls spurious segmenter"):
        load_spurious_segmenter(tmp_path / "clf.pt")


def test_train_needs_masks_that_fit_their_images(stripes, tmp_path):
    data = ImageFolderSplits.open(stripes)
    with pytest.raises(SegmenterDataError, match="no training image"):
        train_segmenter(data, MaskStore(tmp_path / "empty"), FAST)
    store = MaskStore(tmp_path / "wrong")
    store.write(data.splits["train"][0].relpath, np.ones((5, 7), bool))
    with pytest.raises(SegmenterDataError, match="7x5"):
        train_segmenter(data, store, FAST)


def test_evaluate_counts_neutral_and_absent_references_as_empty(stripes, tmp_path):
    """A "none" image's oracle mask and a missing mask are both empty references."""
    data = ImageFolderSplits.open(stripes)
    rels = [s.relpath for s in data.splits["train"]]
    reference = MaskStore(tmp_path / "ref")
    oracle = MaskStore(stripes / "oracle_masks")
    for rel in rels[:4]:  # 0, 2 striped; 1, 3 "none" (their reference is written non-empty)
        reference.write(rel, oracle.read(rel) | (rel in rels[1:4:2]))

    class Everything:  # predicts every pixel spurious
        trained_on = [rels[0]]

        def predict_proba(self, images):
            return [np.ones(np.asarray(im).shape[:2], np.float32) for im in images]

    scores = evaluate_segmenter(Everything(), data, reference)
    assert scores.n == 1  # rels[2]; rels[0] was trained on
    assert scores.n_empty == len(rels) - 2
    assert scores.false_positive_area == 1.0
    assert 0 < scores.iou_mean < 0.5


def test_cli_train_then_eval_json(stripes, tmp_path, capsys):
    data = ImageFolderSplits.open(stripes)
    rels = [s.relpath for s in data.splits["train"]][:16]
    expert_store(tmp_path / "masks", stripes, rels)
    out = tmp_path / "seg.pt"
    argv = [
        "learned-segmenter",
        "train",
        "--data",
        str(stripes),
        "--masks",
        str(tmp_path / "masks"),
    ]
    argv += ["--out", str(out), "--steps", "20", "--json", "-q"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metrics"]["masks"] == 16 and summary["config"]["size"] == 24
    assert main(argv) == 0  # retraining over the file continues its version counter
    assert json.loads(capsys.readouterr().out)["parent_version"] == summary["version"]
    assert main(["learned-segmenter", "eval", "--data", str(stripes), "--segmenter", str(out),
                 "--reference", str(stripes / "oracle_masks"), "--json"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    scores = json.loads(captured.out)
    assert {"iou_mean", "n", "false_positive_area"} <= set(scores) and scores["n"] == 16
    assert "deprecated" not in captured.err


def test_cli_errors_are_one_line(stripes, tmp_path, capsys):
    code = main(["learned-segmenter", "eval", "--data", str(stripes), "--segmenter",
                 str(tmp_path / "x.pt"), "--reference", str(stripes / "oracle_masks")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "\n" not in err


def test_balanced_weights_give_painted_and_empty_masks_half_the_draws_each():
    masks = torch.zeros(5, 4, 4)
    masks[0, 1, 1] = 1.0
    weights = balanced_weights(masks)
    assert weights[0] == pytest.approx(0.5) and weights[1:].sum() == pytest.approx(0.5)
    assert torch.equal(balanced_weights(torch.zeros(3, 4, 4)), torch.ones(3))


def test_permute_channels_moves_hues_but_keeps_greys():
    x = torch.zeros(64, 3, 2, 2)
    x[:, 0] = 1.0  # red
    x[:, :, 1, 1] = 0.5  # a grey pixel
    out = permute_channels(x, torch.Generator().manual_seed(0))
    assert torch.all(out[:, :, 1, 1] == 0.5)
    assert torch.allclose(out.sum(1), x.sum(1))
    assert len({int(c.argmax()) for c in out[:, :, 0, 0]}) == 3  # red became green or blue


def test_cli_default_file_lives_in_the_dataset(tmp_path, capsys):
    """Through ``robustar-ls segmenter``, the command's old name: it works, and warns."""
    data = make_stripe_dataset(tmp_path / "data", n=8, size=16)
    expert_store(data / "masks", data, ["a/0000.png", "a/0001.png"])
    settings = tmp_path / "settings.yaml"
    settings.write_text("spurious_segmenter:\n  steps: 3\n  width: 4\n")
    argv = ["segmenter", "train", "--data", str(data), "--config", str(settings), "--json", "-q"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["config"]["width"] == 4
    warning = "robustar-ls: warning: 'segmenter' is deprecated; use 'learned-segmenter'"
    assert captured.err.splitlines() == [warning]
    assert (data / ".robustar" / "spurious_segmenter.pt").is_file()
    assert main(["segmenter", "eval", "--data", str(data), "--reference",
                 str(data / "oracle_masks"), "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["n"] == 3  # 3 striped images not trained on


def test_propagation_from_a_trained_segmenter_keeps_good_masks_only(trained):
    """Unpainted striped images get accurate masks; featureless ones get none."""
    seg, data = trained
    expert = MaskStore(data.root / "expert-view")
    for rel in seg.trained_on:
        expert.write(rel, np.zeros((24, 24), bool))  # whatever the expert said stays
    result = propagate_dataset(seg, data, expert)
    oracle = MaskStore(data.root / "oracle_masks")
    assert result.expert_kept == 16 and not set(result.masks) & set(seg.trained_on)
    assert len(result.masks) >= 12  # of the 16 unpainted striped images
    assert all(oracle.read(rel).any() for rel in result.masks)
    assert min(iou(m, oracle.read(rel)) for rel, m in result.masks.items()) >= 0.7
