"""The torchrun launch, read from the environment in one module (train/torchrun.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from robustar_ls.train.checkpoint_guard import lock_path, training_lock
from robustar_ls.train.torchrun import Launch, launch, process_group

REPO = Path(__file__).resolve().parents[1]


def test_without_torchrun_rank_0_of_1():
    here = launch({})
    assert here == Launch() and here.is_main and not here.by_torchrun


def test_torchrun_variables():
    here = launch({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (here.rank, here.world_size, here.local_rank) == (3, 4, 1)
    assert here.by_torchrun and not here.is_main
    assert not launch({"WORLD_SIZE": "1", "RANK": "0"}).by_torchrun  # one process
    assert not launch({"WORLD_SIZE": "2"}).by_torchrun  # no rank: not launched by torchrun


def test_one_process_starts_no_group_and_imports_no_torch():
    code = (
        "import sys; from robustar_ls.train.torchrun import process_group\n"
        "with process_group('cpu') as ctx: assert ctx is None\n"
        "assert 'torch' not in sys.modules"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    with process_group("cpu", Launch()) as ctx:
        assert ctx is None


def test_only_rank_0_takes_the_training_lock(tmp_path):
    checkpoint = tmp_path / "m.pt"
    with training_lock(checkpoint, Launch(rank=1, world_size=2, by_torchrun=True)):
        assert not lock_path(checkpoint).exists()
    with training_lock(checkpoint, Launch()):
        assert lock_path(checkpoint).exists()
