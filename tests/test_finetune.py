from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustar_ls import cli
from robustar_ls.config import ConfigError, PairedConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskError, MaskStore
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.models.checkpoint import load_checkpoint, read_version, save_checkpoint
from robustar_ls.models.history import history_path, read_history
from robustar_ls.models.zoo import create_classifier
from robustar_ls.train import finetune, paired_epoch
from robustar_ls.train.augment import random_crop_flip
from robustar_ls.train.finetune import FinetuneRequest, paired_finetune
from robustar_ls.train.paired_data import PairedDataset, find_masks
from robustar_ls.train.paired_epoch import PairedBatch, make_pairs

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = TrainConfig(epochs=2, batch_size=8, lr=0.01, device="cpu", seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paired") / "data"
    make_dataset(
        root,
        SyntheticConfig(
            kind="patch", size=16, per_class=6, test_per_class=3, val_per_class=3, classes=2
        ),
    )
    return root


@pytest.fixture()
def checkpoint(dataset, tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    model = create_classifier("resnet18_small", 2, width=4)
    save_checkpoint(
        path, model, arch="resnet18_small", classes=["circle", "square"], image_size=16, width=4
    )
    return path


ORACLE = "oracle_masks"


def tiny_request(dataset, checkpoint, masks=ORACLE, **options) -> FinetuneRequest:
    """The paired fine-tuning of ``checkpoint`` with ``TINY_TRAIN`` and the default paired
    settings, on the dataset's oracle masks unless ``masks`` is given (None: plain)."""
    masks = dataset / ORACLE if masks == ORACLE else masks
    return FinetuneRequest(dataset, checkpoint, masks, PairedConfig(), TINY_TRAIN, **options)


def test_paired_finetune_writes_a_new_version_with_parent_and_metrics(
    dataset, checkpoint, tmp_path
):
    old_version = read_version(checkpoint)
    old_bytes = checkpoint.read_bytes()
    out = tmp_path / "new.pt"
    result = paired_finetune(tiny_request(dataset, checkpoint, out=out))
    assert checkpoint.read_bytes() == old_bytes  # --out leaves the input alone
    assert result["parent_version"] == old_version
    assert result["model_version"] != old_version
    assert set(result["before"]) == set(result["after"]) == {"train", "val", "test"}
    assert result["annotated"] == 12 == result["train_images"]  # every image has an oracle mask
    assert len(result["history"]) == TINY_TRAIN.epochs
    for epoch in result["history"]:
        assert {"loss", "ce", "ce_paired", "align", "accuracy"} <= set(epoch)
        assert epoch["ce_paired"] > 0 and epoch["annotated"] == 1.0
    saved = load_checkpoint(out)
    assert saved.version == result["model_version"]
    assert saved.parent_version == old_version
    assert saved.metrics["splits"]["test"]["accuracy"] == result["after"]["test"]
    assert saved.config["paired"]["fill"] == "swap" and saved.config["annotated"] == 12


def test_default_out_replaces_the_checkpoint(dataset, checkpoint):
    old_version = read_version(checkpoint)
    result = paired_finetune(
        FinetuneRequest(
            dataset,
            checkpoint,
            dataset / "oracle_masks",
            PairedConfig(),
            TrainConfig(epochs=1, batch_size=8, device="cpu"),
        )
    )
    assert read_version(checkpoint) == result["model_version"] != old_version
    assert load_checkpoint(checkpoint).parent_version == old_version


def test_only_restricts_the_masks_and_none_is_the_control(dataset, checkpoint, tmp_path):
    chosen = {"circle/00000.png", "square/00007.png"}
    result = paired_finetune(tiny_request(dataset, checkpoint, only=chosen, out=tmp_path / "a.pt"))
    assert result["annotated"] == 2
    assert result["history"][0]["annotated"] == pytest.approx(2 / 12)
    control = paired_finetune(tiny_request(dataset, checkpoint, None, out=tmp_path / "b.pt"))
    assert control["annotated"] == 0
    assert all(e["ce_paired"] == 0 and e["align"] == 0 for e in control["history"])
    assert control["history"][0]["loss"] == pytest.approx(control["history"][0]["ce"])


def test_a_crash_mid_epoch_leaves_the_old_checkpoint(dataset, checkpoint, monkeypatch):
    old_bytes = checkpoint.read_bytes()
    calls = {"n": 0}
    real = paired_epoch.paired_loss

    def crash_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-epoch")
        return real(*args, **kwargs)

    monkeypatch.setattr(paired_epoch, "paired_loss", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        paired_finetune(tiny_request(dataset, checkpoint))
    assert calls["n"] == 2
    assert checkpoint.read_bytes() == old_bytes
    assert load_checkpoint(checkpoint).version == read_version(checkpoint)


def test_a_failed_replace_leaves_the_old_checkpoint_and_no_temp_file(
    dataset, checkpoint, monkeypatch
):
    old_bytes = checkpoint.read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("robustar_ls.files.os.replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        paired_finetune(tiny_request(dataset, checkpoint))
    assert checkpoint.read_bytes() == old_bytes
    history = history_path(checkpoint)
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [checkpoint.name, history.name]
    # no history line for a checkpoint that was never written
    assert [e["version"] for e in read_history(checkpoint)] == [read_version(checkpoint)]
    load_checkpoint(checkpoint)


def test_wrong_size_mask_is_named_before_training(dataset, checkpoint, tmp_path, monkeypatch):
    masks = tmp_path / "masks"
    shutil.copytree(dataset / "oracle_masks", masks)
    bad = MaskStore(masks).path_for("square/00008.png")
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(bad)

    def no_training(*args, **kwargs):
        raise AssertionError("training started despite a bad mask")

    monkeypatch.setattr(finetune, "paired_train_one_epoch", no_training)
    with pytest.raises(MaskError, match=r"00008\.png is 12x10 but its image .* is 16x16"):
        paired_finetune(tiny_request(dataset, checkpoint, masks))


def test_missing_or_empty_mask_folder_is_a_clear_error(dataset, checkpoint, tmp_path):
    with pytest.raises(MaskError, match="does not exist"):
        paired_finetune(tiny_request(dataset, checkpoint, tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskError, match="no mask in"):
        paired_finetune(tiny_request(dataset, checkpoint, tmp_path / "empty"))
    with pytest.raises(ConfigError, match="unknown fill"):
        paired_finetune(
            FinetuneRequest(dataset, checkpoint, None, PairedConfig(fill="zebra"), TINY_TRAIN)
        )


def test_dataset_pairs_images_with_their_masks(dataset):
    data = ImageFolderSplits.open(dataset)
    samples = data.splits["train"]
    masks = find_masks(samples, dataset / "oracle_masks", only={samples[0].relpath})
    ds = PairedDataset(samples, 16, masks)
    image, mask, has_mask, label = ds[0]
    assert has_mask and label == samples[0].label
    expected = MaskStore(dataset / "oracle_masks").read(samples[0].relpath)
    assert torch.equal(mask[0].bool(), torch.from_numpy(expected))
    assert float(image.min()) >= 0 and float(image.max()) <= 1  # [0, 1]: filled before normalising
    _, mask1, has1, _ = ds[1]
    assert not has1 and not mask1.any()


def test_masks_are_resized_with_their_image(dataset):
    data = ImageFolderSplits.open(dataset)
    samples = data.splits["train"][:1]
    ds = PairedDataset(samples, 8, find_masks(samples, dataset / "oracle_masks"))
    image, mask, _, _ = ds[0]
    assert image.shape == (3, 8, 8) and mask.shape == (1, 8, 8)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_crop_and_flip_keep_masks_on_their_pixels():
    masks = torch.rand(16, 1, 12, 12) < 0.3
    images = torch.rand(16, 3, 12, 12)
    images[:, :1] = masks.float()  # channel 0 encodes the mask
    out, out_masks = random_crop_flip(images, masks, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :1] > 0.5, out_masks)
    assert not torch.equal(out_masks, masks)  # something moved


@pytest.mark.parametrize("worst_of", [1, 3])
def test_make_pairs_fills_only_annotated_masked_pixels(worst_of):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    images = torch.rand(4, 3, 8, 8)
    masks = torch.zeros(4, 1, 8, 8)
    masks[:, :, :3] = 1
    has_mask = torch.tensor([True, False, True, False])
    cfg = PairedConfig(fill="black", worst_of=worst_of)
    x, x_tilde = make_pairs(
        model,
        PairedBatch(images, masks, has_mask, torch.tensor([0, 1, 0, 1])),
        cfg,
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
    )
    assert torch.equal(x_tilde[~has_mask], x[~has_mask])
    assert torch.equal(x_tilde[:, :, 3:], x[:, :, 3:])
    black = (torch.zeros(3) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    assert torch.allclose(x_tilde[0, :, 0, 0], black)


def test_make_pairs_swaps_in_another_class_from_the_batch_or_the_pool():
    from robustar_ls.data.tensors import normalize
    from robustar_ls.train.fills import DonorPool

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    pool = DonorPool()
    args = (PairedConfig(fill="swap"), torch.Generator().manual_seed(0), torch.device("cpu"))
    masks = torch.ones(2, 1, 8, 8)
    # first batch: two class-0 images, nothing of another class yet -> flat colours, then pooled
    first = torch.tensor([0.1, 0.2]).view(2, 1, 1, 1).expand(2, 3, 8, 8).clone()
    batch = PairedBatch(first, masks, torch.ones(2, dtype=torch.bool), torch.zeros(2))
    _, x_tilde = make_pairs(model, batch, *args, pool)
    assert not torch.allclose(x_tilde[0], normalize(first[1:])[0])  # not its class's feature
    assert not torch.allclose(x_tilde[1], normalize(first[:1])[0])
    assert pool.labels.tolist() == [0, 0]
    # second batch: a class-1 image gets a class-0 image's content from the pool
    second = torch.full((1, 3, 8, 8), 0.8)
    batch = PairedBatch(second, masks[:1], torch.ones(1, dtype=torch.bool), torch.ones(1))
    _, x_tilde = make_pairs(model, batch, *args, pool)
    assert any(torch.allclose(x_tilde[0], normalize(first[i : i + 1])[0]) for i in range(2))


# -- command line ---------------------------------------------------------------------------


def test_cli_sync_train_json(dataset, checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    code = cli.main(
        [
            "sync-train",
            "--data",
            str(dataset),
            "--checkpoint",
            str(checkpoint),
            "--masks",
            str(dataset / "oracle_masks"),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--fill",
            "mixture",
            "--align-weight",
            "0.05",
            "--worst-of",
            "2",
            "--device",
            "cpu",
            "--json",
            "-q",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parent_version"] == read_version(checkpoint)
    assert summary["model_version"] == read_version(out)
    assert set(summary["before"]) == {"train", "val", "test"}
    assert all(0 <= acc <= 1 for acc in summary["after"].values())
    config = load_checkpoint(out).config["paired"]
    assert config == {"fill": "mixture", "align_weight": 0.05, "worst_of": 2}


def test_cli_default_masks_folder_and_errors(dataset, checkpoint, capsys):
    code = cli.main(["sync-train", "--data", str(dataset), "--checkpoint", str(checkpoint), "-q"])
    assert code == 2
    assert f"mask folder {dataset / 'masks'} does not exist" in capsys.readouterr().err


def test_fill_choices_match_the_library():
    from robustar_ls.cli.sync_train import FILL_MODE_CHOICES
    from robustar_ls.train.fills import FILL_MODES

    assert tuple(FILL_MODE_CHOICES) == FILL_MODES


def test_script_wrapper_calls_the_cli(dataset, checkpoint, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import sync_and_train
    finally:
        sys.path.pop(0)
    out = tmp_path / "script.pt"
    code = sync_and_train.main(
        [
            "--data",
            str(dataset),
            "--checkpoint",
            str(checkpoint),
            "--masks",
            str(dataset / "oracle_masks"),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--json",
            "-q",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["model_version"] == read_version(out)


# -- DistributedDataParallel ----------------------------------------------------------------


@pytest.mark.slow
def test_two_process_ddp_run_writes_one_checkpoint(dataset, checkpoint, tmp_path):
    old_version = read_version(checkpoint)
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "robustar_ls.cli",
        "sync-train",
        "--data",
        str(dataset),
        "--checkpoint",
        str(checkpoint),
        "--masks",
        str(dataset / "oracle_masks"),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--json",
        "-q",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # exactly one JSON document: rank 0 only
    assert summary["parent_version"] == old_version
    assert read_version(out) == summary["model_version"] != old_version
    assert load_checkpoint(out).config["world_size"] == 2
    lock = f".{checkpoint.name}.training.lock"  # the training lock stays, by design
    files = ["ddp.pt", checkpoint.name]
    expected = sorted(files + [lock] + [history_path(tmp_path / name).name for name in files])
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    (entry,) = read_history(out)  # one line: only rank 0 writes
    assert entry["version"] == summary["model_version"] and entry["parent_version"] == old_version


def test_masks_of_exif_rotated_images_are_checked_against_the_displayed_size(tmp_path):
    """A mask painted in Label Studio has the image's displayed (rotated) size."""
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 8 wide x 12 high
    for cls in ("a", "b"):
        folder = tmp_path / "data" / "train" / cls
        folder.mkdir(parents=True)
        Image.new("RGB", (12, 8), "red").save(folder / "x.jpg", exif=exif)
    store = MaskStore(tmp_path / "masks")
    store.write("a/x.jpg", np.zeros((12, 8), dtype=bool))
    samples = ImageFolderSplits.open(tmp_path / "data").splits["train"]
    assert list(find_masks(samples, tmp_path / "masks")) == ["a/x.jpg"]
    store.write("b/x.jpg", np.zeros((8, 12), dtype=bool))  # the unrotated size: wrong
    with pytest.raises(MaskError, match="8x12"):
        find_masks(samples, tmp_path / "masks")


# -- one training per checkpoint; compare-and-swap on writing (issue 10, item 6) --------------


def test_a_second_training_of_the_same_checkpoint_is_refused(dataset, checkpoint):
    from robustar_ls.train.checkpoint_guard import CheckpointBusy, training_lock
    from robustar_ls.train.recipe import Recipe
    from robustar_ls.workflows.sync_train import SyncTrainRequest, sync_and_train

    old_bytes = checkpoint.read_bytes()
    recipe = Recipe.only("finetune", TINY_TRAIN)
    request = SyncTrainRequest.open(dataset, checkpoint, dataset / "oracle_masks", recipe=recipe)
    with training_lock(checkpoint), pytest.raises(CheckpointBusy, match="another training"):
        sync_and_train(request)
    assert checkpoint.read_bytes() == old_bytes
    with training_lock(checkpoint):  # released: free again
        pass


def test_a_checkpoint_changed_during_training_is_not_overwritten(dataset, checkpoint):
    from robustar_ls.train.checkpoint_guard import CheckpointChanged

    torch.manual_seed(5)
    other = create_classifier("resnet18_small", 2, width=4)

    written = []

    def someone_else_writes(iterable, **kwargs):  # e.g. `train --out` on the same path
        written.append(
            save_checkpoint(
                checkpoint,
                other,
                arch="resnet18_small",
                classes=["circle", "square"],
                image_size=16,
                width=4,
            )
        )
        return iterable

    with pytest.raises(CheckpointChanged, match="changed while training"):
        paired_finetune(
            tiny_request(dataset, checkpoint),
            progress=someone_else_writes,
        )
    assert written and read_version(checkpoint) == written[-1]  # the other writer's file stands


def test_extra_masks_pair_unannotated_images_and_the_store_wins(
    dataset, checkpoint, tmp_path, monkeypatch
):
    seen = {}
    monkeypatch.setattr(finetune, "_run", lambda run: seen.setdefault("masks", run.masks))
    expert = {"circle/00000.png", "square/00007.png"}
    extra_store = MaskStore(tmp_path / "propagated")
    extra = {
        rel: extra_store.write(rel, np.ones((32, 32), bool))
        for rel in ("circle/00000.png", "circle/00001.png")
    }
    extra["circle/no-such-image.png"] = tmp_path / "x.png"
    paired_finetune(tiny_request(dataset, checkpoint, only=expert, extra_masks=extra))
    masks = seen["masks"]
    assert set(masks) == expert | {"circle/00001.png"}  # unknown images are dropped
    assert masks["circle/00000.png"] == MaskStore(dataset / "oracle_masks").path_for(
        "circle/00000.png"
    )  # the expert's mask wins over a propagated one
    assert masks["circle/00001.png"] == extra["circle/00001.png"]


def test_all_zero_masks_are_not_annotated_and_still_win_over_extra_masks(
    dataset, checkpoint, tmp_path, monkeypatch
):
    seen = {}
    monkeypatch.setattr(finetune, "_run", lambda run: seen.setdefault("masks", run.masks))
    store = MaskStore(tmp_path / "masks")
    oracle = MaskStore(dataset / "oracle_masks")
    store.write("circle/00000.png", np.zeros((16, 16), bool))  # the expert's negative
    store.write("square/00007.png", oracle.read("square/00007.png"))
    propagated = MaskStore(tmp_path / "propagated")
    extra = {
        rel: propagated.write(rel, np.ones((16, 16), bool))
        for rel in ("circle/00000.png", "circle/00001.png")
    }
    extra["circle/00002.png"] = propagated.write("circle/00002.png", np.zeros((16, 16), bool))
    paired_finetune(tiny_request(dataset, checkpoint, tmp_path / "masks", extra_masks=extra))
    assert set(seen["masks"]) == {"square/00007.png", "circle/00001.png"}


def test_progress_and_history_of_a_paired_run(dataset, checkpoint, tmp_path):
    records: list[dict] = []
    parent = read_version(checkpoint)
    summary = paired_finetune(
        tiny_request(dataset, checkpoint, history={"sync": {"added": 3}}),
        on_progress=records.append,
    )
    phases = [r["phase"] for r in records]
    # evaluate before, train, evaluate after, write: in that order
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order == ["eval", "train", "eval", "write"]
    steps = [r for r in records if r["phase"] == "train" and r["step"] > 0]
    assert len(steps) == TINY_TRAIN.epochs * 2  # 12 training images in batches of 8
    assert steps[-1]["fraction"] == 1.0 and steps[0]["fraction"] == 0.25
    assert all(r["eta_seconds"] is not None and r["last_loss"] >= 0 for r in steps)
    entries = read_history(checkpoint)
    assert [e["version"] for e in entries] == [parent, summary["model_version"]]
    entry = entries[-1]
    assert entry["parent_version"] == parent and entry["kind"] == "paired"
    assert entry["before"] == summary["before"] and entry["after"] == summary["after"]
    assert entry["annotated"] == summary["annotated"] and entry["sync"] == {"added": 3}
    assert [e["epoch"] for e in entry["epochs"]] == [1, 2]
    assert set(entry["epochs"][0]) >= {"loss", "ce", "ce_paired", "align"}
    attention = summary["saliency_in_masks"]  # measured on the paired images, both models
    assert entry["saliency_in_masks"] == attention
    assert 0.0 <= attention["before"] <= 1.0 and 0.0 <= attention["after"] <= 1.0
