"""`sync-train --propagate` under torchrun: rank 0 trains the learned segmenter and propagates,
every rank pairs the same masks (two CPU processes, no Label Studio: the masks are local)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustar_ls.data.masks import MaskStore
from robustar_ls.models.checkpoint import read_version
from tests.backend_support import dataset_copy_with_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sync_train_propagates_under_torchrun(tiny_dataset, tmp_path):
    data_root, data, checkpoint, v0 = dataset_copy_with_checkpoint(tiny_dataset, tmp_path)
    oracle, painted = MaskStore(data_root / "oracle_masks"), MaskStore(tmp_path / "painted")
    samples = data.splits["train"]
    expert = [s.relpath for s in samples[::4]]  # one image in four painted
    for rel in expert:
        painted.write(rel, oracle.read(rel))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "robustar_ls.cli", "sync-train", "--data", str(data_root)]
    cmd += ["--checkpoint", str(checkpoint), "--masks", str(painted.root), "--propagate"]
    cmd += ["--propagate-threshold", "0.5", "--epochs", "1", "--batch-size", "4"]
    cmd += ["--device", "cpu", "--json", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # one JSON document: rank 0's
    propagation = summary["segmenter"]["propagation"]
    assert summary["segmenter"]["retrained"]  # no segmenter yet: rank 0 trained one
    assert propagation["predicted"] == len(samples) - len(expert)
    assert summary["annotated"] == len(expert) + propagation["propagated"]
    assert read_version(checkpoint) == summary["model_version"] != v0
