"""The train / eval / make-dataset commands, called through main() like a user would."""

from __future__ import annotations

import json

from robustar_ls.cli import main
from robustar_ls.models.checkpoint import load_checkpoint


def test_train_then_eval_json(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "m.pt"
    args = ["train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1"]
    assert main([*args, "--width", "4", "--image-size", "16", "-q", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert set(trained["splits"]) == {"train", "val", "test"}
    assert main(["eval", "--data", str(tiny_dataset), "--checkpoint", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_version"] == trained["model_version"] == load_checkpoint(out).version
    assert report["splits"]["train"]["n"] == 24 and report["splits"]["test"]["n"] == 12
    assert report["splits"] == trained["splits"]


def test_fine_tune_from_init_records_parent(tiny_dataset, tmp_path, capsys):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    common = ["--data", str(tiny_dataset), "--epochs", "1", "--width", "4", "-q", "--json"]
    assert main(["train", *common, "--out", str(first), "--image-size", "16"]) == 0
    v1 = json.loads(capsys.readouterr().out)["model_version"]
    assert main(["train", *common, "--out", str(second), "--init", str(first)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parent_version"] == v1 and summary["model_version"].startswith("v2-")


def test_user_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "none"), "--checkpoint", "x.pt"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", "m.pt", "--arch", "nope"]) == 2
    assert "no train folder" in capsys.readouterr().err


def test_make_dataset_command(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["make-dataset", str(out), "--kind", "background", "--size", "16", "--per-class", "2"]
    assert (
        main([*argv, "--classes", "2", "--test-per-class", "1", "--val-per-class", "1", "-q"]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith("wrote 4 train, 2 val, 2 test images to ")  # not a dict
    assert "{" not in printed and "aligned" in printed
    assert (out / "spurious.json").is_file() and len(list((out / "train").rglob("*.png"))) == 4
