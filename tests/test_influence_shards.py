"""Influence featurization sharded over processes: shard layout, resume, torchrun end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from robustar_ls.config import InfluenceConfig, SyntheticConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.explain.feature_cache import FeatureCache, FeatureCacheError
from robustar_ls.explain.feature_shards import TARGET_SHARDS, ShardStore, shard_bounds
from robustar_ls.explain.influence import InfluenceScorer
from robustar_ls.models.checkpoint import load_checkpoint, save_checkpoint
from robustar_ls.models.zoo import create_classifier
from robustar_ls.workflows import influence

SIZE = 16
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class OneRank:
    """This process as rank ``rank`` of ``world_size`` (no collective runs when 1)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards") / "data"
    cfg = SyntheticConfig(size=SIZE, per_class=12, test_per_class=4, val_per_class=0, seed=5)
    make_dataset(root, cfg)
    return ImageFolderSplits.open(root, required=("train", "test"))


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    torch.manual_seed(0)
    model = create_classifier("resnet18_small", len(dataset.classes), width=4).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(
        path, model, arch="resnet18_small", classes=dataset.classes, image_size=SIZE, width=4
    )
    return path


CFG = InfluenceConfig(k=48, batch_size=4, device="cpu")


def scorer_for(checkpoint) -> InfluenceScorer:
    return InfluenceScorer(load_checkpoint(checkpoint).model, None, CFG)


def features_of(scorer, dataset, cache, ranks=None):
    train = dataset.splits["train"]
    return scorer.train_features(train, SIZE, "v1-test", cache, ranks=ranks)


def test_shards_are_whole_batches_covering_every_row_once():
    for n, batch in [(1, 4), (10, 4), (48, 4), (1000, 64), (100_000, 64)]:
        bounds = shard_bounds(n, batch)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        assert all((stop - start) % batch == 0 for start, stop in bounds[:-1])
        assert len(bounds) <= TARGET_SHARDS
    assert len(shard_bounds(100_000, 64)) > TARGET_SHARDS // 2  # fine enough to balance


def test_interrupted_run_resumes_from_written_shards(dataset, checkpoint, tmp_path):
    plain = features_of(scorer_for(checkpoint), dataset, tmp_path / "plain")
    n = plain.n
    bounds = shard_bounds(n, CFG.batch_size)
    scorer = scorer_for(checkpoint)
    calls = {"shards": 0}
    original = scorer.feature_batches

    def dies_after_three(loader, target="margin", progress=None):
        if calls["shards"] == 3:
            raise RuntimeError("killed")  # the run is killed while featurizing the fourth shard
        calls["shards"] += 1
        return original(loader, target, progress)

    scorer.feature_batches = dies_after_three
    cache = tmp_path / "sharded"
    with pytest.raises(RuntimeError, match="killed"):
        features_of(scorer, dataset, cache, OneRank())
    folder = FeatureCache(cache).folder("v1-test")
    assert not (folder / "meta.json").exists()  # nothing published
    assert len(list((folder / "shards").glob("*.json"))) == 3

    again = scorer_for(checkpoint)
    resumed = features_of(again, dataset, cache, OneRank())
    assert again.featurized == n - sum(stop - start for start, stop in bounds[:3])
    np.testing.assert_array_equal(resumed.rows(0, n), plain.rows(0, n))
    np.testing.assert_allclose(resumed.gram, plain.gram, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(resumed.feature_sum, plain.feature_sum, rtol=1e-6, atol=1e-6)
    assert not (folder / "shards").exists()  # merged, then removed
    third = scorer_for(checkpoint)
    features_of(third, dataset, cache, OneRank())
    assert third.featurized == 0  # the published cache is reused as a whole


def test_shards_of_another_description_are_featurized_again(dataset, checkpoint, tmp_path):
    scorer = scorer_for(checkpoint)
    n = len(dataset.splits["train"])
    folder = FeatureCache(tmp_path).folder("v1-test")
    bounds = shard_bounds(n, CFG.batch_size)[0]
    block = np.ones((bounds[1] - bounds[0], CFG.k), np.float32)
    ShardStore(folder, "another-digest", CFG.dtype).write(0, bounds, block)
    features = features_of(scorer, dataset, tmp_path, OneRank())
    assert scorer.featurized == n
    assert not np.allclose(features.rows(*bounds), 1.0)


def test_rank0_names_shards_it_cannot_see(dataset, checkpoint, tmp_path):
    """Rank 1's shards missing on rank 0 (several nodes, no shared cache folder): one error."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:  # a group of one, while this rank believes it is rank 0 of 2: half is never written
        with pytest.raises(FeatureCacheError, match="every node sees"):
            features_of(scorer_for(checkpoint), dataset, tmp_path, OneRank(0, 2))
    finally:
        dist.destroy_process_group()


def test_plain_process_has_no_process_group(monkeypatch):
    from robustar_ls.train.torchrun import process_group

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group("cpu") as ranks:
        assert ranks is None


def _influence_argv(dataset, checkpoint, cache: Path) -> list[str]:
    argv = ["influence", "--data", str(dataset.root), "--checkpoint", str(checkpoint)]
    argv += ["--k", str(CFG.k), "--batch-size", str(CFG.batch_size), "--device", "cpu"]
    return argv + ["--cache-dir", str(cache), "--json", "-q"]


def test_torchrun_two_processes_score_like_one(dataset, checkpoint, tmp_path):
    """``torchrun --nproc-per-node 2 ... influence`` (Gloo): the single-process scores, one
    JSON document (rank 1 prints nothing), shards merged into the usual cache."""
    ckpt = load_checkpoint(checkpoint)
    single = influence.score(dataset, ckpt, CFG, cache_root=tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc-per-node", "2", "-m", "robustar_ls.cli"]
    cache = tmp_path / "two"
    done = subprocess.run(
        launcher + _influence_argv(dataset, checkpoint, cache),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)  # exactly one document: rank 0's
    assert printed["model_version"] == ckpt.version
    relpaths = sorted(single.scores)
    assert sorted(printed["scores"]) == relpaths
    np.testing.assert_allclose(
        [printed["scores"][r] for r in relpaths],
        [single.scores[r] for r in relpaths],
        rtol=1e-5,
        atol=1e-6,
    )
    folder = FeatureCache(cache).folder(ckpt.version)
    assert (folder / "meta.json").is_file() and not (folder / "shards").exists()
