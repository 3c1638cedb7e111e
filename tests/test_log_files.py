"""Output that goes to a file reads well: no progress-bar redraws, one log line per epoch."""

from __future__ import annotations

import subprocess
import sys


def test_training_into_a_file_has_no_carriage_returns_and_a_line_per_epoch(tmp_path):
    data, log = tmp_path / "d", tmp_path / "train.log"
    base = [sys.executable, "-m", "robustar_ls.cli"]
    make = [*base, "make-dataset", str(data), "--per-class", "4", "--size", "16",
            "--test-per-class", "2", "--val-per-class", "2", "--classes", "2"]  # fmt: skip
    train = [*base, "train", "--data", str(data), "--out", str(tmp_path / "m.pt"), "--epochs",
             "2", "--width", "4", "--image-size", "16", "--device", "cpu"]  # fmt: skip
    with log.open("w") as out:
        for argv in (make, train):
            subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
    text = log.read_text()
    assert "\r" not in text  # a terminal would have had tqdm's redraws
    assert [line for line in text.splitlines() if " epoch 1/2 " in line]
    assert [line for line in text.splitlines() if " epoch 2/2 " in line]
