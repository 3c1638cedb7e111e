"""Group metrics: worst-group and bias-conflicting accuracy from ``groups.json``."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from robustar_ls.cli import main
from robustar_ls.cli.history import format_table
from robustar_ls.config import SyntheticConfig, TrainConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.groups import (
    GROUPS_FILE,
    change_text,
    group_metrics,
    group_text,
    groups_before_after,
    load_groups,
    split_group_metrics,
)
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.models.history import history_entry, read_history
from robustar_ls.models.zoo import create_classifier
from robustar_ls.train.recipe import Recipe
from robustar_ls.train.run import evaluate_splits, make_loader
from robustar_ls.workflows.simulate import simulate
from tests.data_support import dataset_with_model

TRAIN = TrainConfig(epochs=1, batch_size=8, lr=0.02, device="cpu", augment=False)


def _rows(true, cue, n, correct):
    """``n`` images of class ``true`` with ``cue``, the first ``correct`` predicted right."""
    wrong = "b" if true == "a" else "a"
    return [(true, true if i < correct else wrong, cue) for i in range(n)]


HAND_MADE = [
    *_rows("a", "a", 6, 5),  # aligned: 5/6
    *_rows("a", "b", 5, 1),  # conflicting: 1/5 = 0.2, the worst counted group
    *_rows("b", "b", 5, 5),  # aligned: 5/5
    *_rows("b", "a", 4, 0),  # conflicting: 0/4, but only 4 images: not a group that counts
    *_rows("a", None, 5, 4),  # no cue: 4/5
    *_rows("b", None, 2, 2),  # no cue: 2/2, too small
]


def test_exact_numbers_on_a_hand_made_prediction_set():
    true, predicted, cues = zip(*HAND_MADE, strict=True)
    metrics = group_metrics(true, predicted, cues)
    assert metrics["worst_group"] == pytest.approx(0.2)  # not (b, a)'s 0.0: 4 < 5 images
    assert metrics["worst_group_of"] == ["a", "b"]
    assert metrics["groups_counted"] == 4
    assert metrics["bias_conflicting"] == pytest.approx(1 / 9)  # (1 + 0) / (5 + 4)
    assert metrics["n_bias_conflicting"] == 9
    assert metrics["bias_aligned"] == pytest.approx(10 / 11)  # (5 + 5) / (6 + 5)
    assert metrics["n_bias_aligned"] == 11
    # with a smaller threshold the 4-image group counts, and is the worst
    small = group_metrics(true, predicted, cues, min_size=4)
    assert (small["worst_group"], small["worst_group_of"], small["groups_counted"]) == (
        0.0,
        ["b", "a"],
        5,
    )
    assert group_text(metrics) == (
        "worst group 0.200 (a, cue b), bias-conflicting 0.111 (n=9), bias-aligned 0.909 (n=11)"
    )


def test_groups_under_five_images_are_left_out_and_so_are_metrics_without_images():
    rows = _rows("a", "a", 4, 0) + _rows("b", None, 4, 4)  # no group of 5, no conflict
    true, predicted, cues = zip(*rows, strict=True)
    metrics = group_metrics(true, predicted, cues)
    assert metrics == {"bias_aligned": 0.0, "n_bias_aligned": 4}
    assert group_metrics([], [], []) == {}
    with pytest.raises(ValueError, match="one true class"):
        group_metrics(["a"], [], [None])


def test_split_group_metrics_from_indices_skips_unlisted_images():
    classes = ["a", "b"]
    relpaths = [f"{t}/{i:03d}.png" for i, (t, _, _) in enumerate(HAND_MADE)]
    labels = [classes.index(t) for t, _, _ in HAND_MADE]
    predictions = [classes.index(p) for _, p, _ in HAND_MADE]
    cues = {rel: cue for rel, (_, _, cue) in zip(relpaths, HAND_MADE, strict=True)}
    full = split_group_metrics(relpaths, labels, predictions, classes, cues)
    true, predicted, cue = zip(*HAND_MADE, strict=True)
    assert full == group_metrics(true, predicted, cue)
    extra = split_group_metrics(
        [*relpaths, "a/new.png"], [*labels, 0], [*predictions, 1], classes, cues
    )
    assert extra == full  # an image groups.json does not list is left out
    assert split_group_metrics(relpaths, labels, predictions, classes, {}) == {}


def test_load_groups_absent_or_malformed_is_none(tmp_path, caplog):
    assert load_groups(tmp_path) is None
    (tmp_path / GROUPS_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert load_groups(tmp_path) is None
    (tmp_path / GROUPS_FILE).write_text(json.dumps({"test": {"a/1.png": 3}}))
    with caplog.at_level(logging.WARNING):
        assert load_groups(tmp_path) is None
    assert "no group metrics" in caplog.text
    (tmp_path / GROUPS_FILE).write_text(json.dumps({"test": {"a/1.png": "b", "b/2.png": None}}))
    assert load_groups(tmp_path) == {"test": {"a/1.png": "b", "b/2.png": None}}


@pytest.mark.parametrize("kind", ["patch", "background", "digits"])
def test_make_dataset_writes_every_split_s_cues(tmp_path, kind):
    if kind == "digits":
        pytest.importorskip("sklearn")
    cfg = SyntheticConfig(
        kind=kind,
        size=16,
        per_class=8,
        val_per_class=3,
        test_per_class=4,
        classes=3,
        spurious_fraction=0.5,
        bias=0.7,
    )
    summary = make_dataset(tmp_path, cfg)
    groups = json.loads((tmp_path / GROUPS_FILE).read_text())
    assert set(groups) == {"train", "val", "test"}
    for split, cues in groups.items():
        files = sorted(
            p.relative_to(tmp_path / split).as_posix() for p in tmp_path.glob(f"{split}/*/*")
        )
        assert sorted(cues) == files
        assert set(cues.values()) <= {*summary["classes"], None}
    status = json.loads((tmp_path / "spurious.json").read_text())  # unchanged, train only
    assert sorted(status) == sorted(groups["train"])
    for rel, cue in groups["train"].items():
        folder = rel.split("/")[0]
        expected = {
            "none": cue is None,
            "aligned": cue == folder,
            "misaligned": cue not in (None, folder),
        }
        assert expected[status[rel]], (rel, cue, status[rel])
    assert None not in groups["test"].values()  # out-of-domain: every test image coloured
    # no feature on a split written without images: it is left out
    make_dataset(
        tmp_path / "no_val",
        SyntheticConfig(
            kind="patch", size=16, per_class=2, val_per_class=0, test_per_class=1, classes=2
        ),
    )
    assert set(json.loads((tmp_path / "no_val" / GROUPS_FILE).read_text())) == {"train", "test"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 2-class, 16 px background dataset with 10 test images per class and a 1-epoch model."""
    root = tmp_path_factory.mktemp("groups") / "ds"
    cfg = SyntheticConfig(
        kind="background",
        size=16,
        per_class=12,
        val_per_class=6,
        test_per_class=10,
        classes=2,
        spurious_fraction=0.5,
        bias=0.8,
        seed=3,
    )
    return dataset_with_model(root, cfg, TRAIN)


def _predictions(model, samples):
    out = []
    with torch.no_grad():
        for images, _ in make_loader(samples, 16, 64):
            out += model(images).argmax(1).tolist()
    return out


def test_evaluate_splits_adds_the_group_metrics_and_none_without_groups_json(tmp_path):
    make_dataset(
        tmp_path,
        SyntheticConfig(
            kind="patch",
            size=16,
            per_class=6,
            val_per_class=5,
            test_per_class=10,
            classes=2,
            spurious_fraction=0.5,
            bias=0.5,
        ),
    )
    torch.manual_seed(0)
    model = create_classifier("resnet18_small", 2, width=4).eval()
    data = ImageFolderSplits.open(tmp_path)
    metrics = evaluate_splits(model, data, 16, torch.device("cpu"))
    groups = load_groups(tmp_path)
    for split in ("train", "val", "test"):
        samples = data.splits[split]
        expected = split_group_metrics(
            [s.relpath for s in samples],
            [s.label for s in samples],
            _predictions(model, samples),
            data.classes,
            groups[split],
        )
        assert expected  # every split has some group metric here
        assert {k: v for k, v in metrics[split].items() if k not in ("accuracy", "n")} == expected
    assert "worst_group" in metrics["test"] and "bias_conflicting" in metrics["test"]
    (tmp_path / GROUPS_FILE).unlink()
    plain = evaluate_splits(model, ImageFolderSplits.open(tmp_path), 16, torch.device("cpu"))
    assert all(set(m) == {"accuracy", "n"} for m in plain.values())
    assert {s: m["accuracy"] for s, m in plain.items()} == {
        s: m["accuracy"] for s, m in metrics.items()
    }


def test_eval_json_and_text_and_the_checkpoint_history_carry_them(dataset, capsys):
    root, ckpt = dataset
    assert main(["eval", "--data", str(root), "--checkpoint", str(ckpt), "--json"]) == 0
    test = json.loads(capsys.readouterr().out)["splits"]["test"]
    assert {"worst_group", "bias_conflicting", "n_bias_conflicting"} <= set(test)
    assert test["n_bias_conflicting"] + test.get("n_bias_aligned", 0) == 20
    assert main(["eval", "--data", str(root), "--checkpoint", str(ckpt)]) == 0
    text = capsys.readouterr().out
    test_line = next(line for line in text.splitlines() if line.startswith("test"))
    assert "worst group" in test_line and "bias-conflicting" in test_line
    entry = read_history(ckpt)[-1]  # written by train
    assert entry["groups"]["before"] is None
    assert entry["groups"]["after"]["test"]["worst_group"] == pytest.approx(test["worst_group"])
    assert "test worst-group" in format_table([entry])


def test_history_entry_groups_before_and_after_or_none():
    base = {"version": "v2-b", "parent_version": "v1-a", "created_at": "t", "config": {}}
    plain = {"val": {"accuracy": 0.9, "n": 10}, "test": {"accuracy": 0.5, "n": 20}}
    entry = history_entry({**base, "metrics": {"splits": plain, "before": plain}})
    assert entry["groups"] is None
    assert "worst-group" not in format_table([entry])
    grouped = {**plain, "test": {**plain["test"], "worst_group": 0.25, "bias_conflicting": 0.4}}
    entry = history_entry({**base, "metrics": {"splits": grouped, "before": plain}})
    assert entry["after"] == {"val": 0.9, "test": 0.5}  # still {split: accuracy}
    assert entry["groups"] == {
        "before": None,
        "after": {"test": {"worst_group": 0.25, "bias_conflicting": 0.4}},
    }
    table = format_table([entry])
    assert "test bias-conflicting" in table.splitlines()[0] and "0.400" in table
    both = history_entry({**base, "metrics": {"splits": grouped, "before": grouped}})
    assert "0.250→0.250" in format_table([both])


def test_groups_before_after_and_its_text():
    before = {"test": {"accuracy": 0.3, "n": 9, "worst_group": 0.1, "bias_conflicting": 0.2}}
    after = {"test": {"accuracy": 0.6, "n": 9, "worst_group": 0.4, "bias_conflicting": 0.5}}
    groups = groups_before_after(before, after)
    assert groups["after"] == {"test": {"worst_group": 0.4, "bias_conflicting": 0.5}}
    assert change_text(groups, "test") == "worst group 0.100→0.400, bias-conflicting 0.200→0.500"
    assert change_text(groups, "val") == "" and change_text(None, "test") == ""
    assert groups_before_after({"test": {"accuracy": 1.0}}, None) is None


def test_simulate_json_and_text_carry_them_before_and_after(dataset, capsys):
    root, ckpt = dataset
    result = simulate(
        root, ckpt, order="random", budget=0.25, recipe=Recipe.only("finetune", TRAIN)
    )
    groups = result["groups"]
    for when in ("before", "after"):
        test = groups[when]["test"]
        assert 0.0 <= test["worst_group"] <= 1.0 and 0.0 <= test["bias_conflicting"] <= 1.0
    assert set(result["after"]) == {"train", "val", "test"}  # still {split: accuracy}
    argv = ["simulate", "--data", str(root), "--checkpoint", str(ckpt), "--order", "random"]
    argv += ["--budget", "0", "--epochs", "1", "--device", "cpu", "-q"]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "worst_group" in summary["groups"]["after"]["test"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "\n  test: worst group " in text and "bias-conflicting" in text


def test_simulate_without_groups_json_has_none(dataset, tmp_path):
    import shutil

    root, ckpt = dataset
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    (copy / GROUPS_FILE).unlink()
    result = simulate(
        copy, copy / "model.pt", order="random", budget=0.0, recipe=Recipe.only("finetune", TRAIN)
    )
    assert result["groups"] is None
