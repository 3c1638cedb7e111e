"""Influence scorer: projections, per-sample gradients, kernel scores, cache, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robustar_ls import cli
from robustar_ls.config import InfluenceConfig, SyntheticConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.explain.feature_cache import FeatureCache, TrainFeatures
from robustar_ls.explain.influence import (
    InfluenceError,
    InfluenceResult,
    InfluenceScorer,
    ScoreRequest,
    kernel_scores,
    parameter_names,
)
from robustar_ls.explain.projection import (
    GaussianProjection,
    ProjectionError,
    SketchProjection,
    make_projection,
)
from robustar_ls.models.checkpoint import load_checkpoint, save_checkpoint
from robustar_ls.models.zoo import create_classifier

SIZE = 16
CLASSES = 3


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_classifier("resnet18_small", CLASSES, width=4).eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("influence") / "data"
    cfg = SyntheticConfig(
        size=SIZE, per_class=8, test_per_class=4, val_per_class=0, classes=CLASSES, seed=3
    )
    make_dataset(root, cfg)
    return ImageFolderSplits.open(root, required=("train", "test"))


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    version = save_checkpoint(
        path, tiny_model(), arch="resnet18_small", classes=dataset.classes, image_size=SIZE, width=4
    )
    return path, version


# -- projections ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sketch", "gaussian"])
def test_projection_equals_its_dense_matrix(kind):
    """The chunked / sparse projection equals the product with the same-seed dense matrix."""
    dims = [30, 7, 64]
    grads = [torch.randn(5, 30), torch.randn(5, 7), torch.randn(5, 8, 8)]
    if kind == "gaussian":  # tiny blocks cut across parameters; no block cache: regenerated
        proj = GaussianProjection(dims, 16, seed=4, block_rows=9, cache_bytes=0)
    else:
        proj = SketchProjection(dims, 16, seed=4)
    flat = torch.cat([g.reshape(5, -1) for g in grads], dim=1)
    expected = flat @ proj.dense()
    torch.testing.assert_close(proj.project(grads), expected, rtol=1e-5, atol=1e-5)
    again = type(proj)(dims, 16, seed=4, **({"block_rows": 9} if kind == "gaussian" else {}))
    torch.testing.assert_close(again.project(grads), proj.project(grads))
    other = type(proj)(dims, 16, seed=5, **({"block_rows": 9} if kind == "gaussian" else {}))
    assert not torch.equal(other.dense(), proj.dense())


def test_projections_preserve_dot_products_on_average():
    d, k = 400, 256
    a, b = torch.randn(1, d), torch.randn(1, d)
    exact = float(a @ b.T)
    for kind in ("sketch", "gaussian"):
        estimates = [
            float(
                make_projection(kind, [d], k, seed=s).project([a])
                @ make_projection(kind, [d], k, seed=s).project([b]).T
            )
            for s in range(40)
        ]
        # std of one estimate ~ |a||b|/sqrt(k) = 25; of the mean of 40 ~ 4
        assert abs(np.mean(estimates) - exact) < 15, kind


def test_bad_projection_is_a_clear_error():
    with pytest.raises(ProjectionError, match="choose one of"):
        make_projection("fft", [3], 4)
    with pytest.raises(ProjectionError, match="at least 1"):
        make_projection("sketch", [3], 0)


# -- per-sample gradients -------------------------------------------------------------------


def exact_grads(model, images, labels, names, target, predicted=None) -> torch.Tensor:
    """Per-sample gradients by a plain autograd loop (independent of torch.func)."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(images)):
        z = model(images[i : i + 1])[0]
        y = int(labels[i])
        if target == "margin":
            others = torch.cat([z[:y], z[y + 1 :]])
            value = z[y] - torch.logsumexp(others, 0)
        else:  # error: push toward the predicted class
            value = z[int(z.argmax())] - z[y]
        grads = torch.autograd.grad(value, [params[n] for n in names])
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def test_featurize_equals_projected_autograd_gradients():
    model = tiny_model()
    scorer = InfluenceScorer(model, None, InfluenceConfig(k=64), device="cpu")
    assert scorer.layers == ["layer4.1", "fc"]
    images, labels = torch.randn(6, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0, 1, 2])
    for target in ("margin", "error"):
        got = scorer.featurize([(images[:4], labels[:4]), (images[4:], labels[4:])], target)
        expected = exact_grads(model, images, labels, scorer.names, target)
        expected = expected @ scorer.projection.dense()
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(InfluenceError, match="not modules of the model"):
        parameter_names(tiny_model(), ["layer9"])


# -- kernel scores --------------------------------------------------------------------------


def dense_reference(phi, psi, damping):
    lam = damping * (phi**2).sum() / phi.shape[1]
    return phi @ np.linalg.solve(phi.T @ phi + lam * np.eye(phi.shape[1]), psi.T)


def test_kernel_scores_stream_in_chunks_like_the_dense_formula():
    rng = np.random.default_rng(0)
    phi = rng.standard_normal((50, 8)).astype(np.float32)
    psi = rng.standard_normal((6, 8)).astype(np.float32)
    dense = dense_reference(phi.astype(np.float64), psi.astype(np.float64), 0.1)
    train = TrainFeatures.from_array(phi)
    cfg = InfluenceConfig(damping=0.1, aggregate="sum", support=5, explain_top=2)
    result = kernel_scores(train, psi, cfg, rows_per_chunk=7)
    np.testing.assert_allclose(result.scores, dense.sum(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(result.top_index, np.argsort(-dense, axis=1)[:, :2])
    drives = np.zeros(50, dtype=int)
    for t in range(6):
        top = np.argsort(-dense[:, t])[:5]
        drives[top[dense[top, t] > 0]] += 1
    np.testing.assert_array_equal(result.drives, drives)
    # per test error, its most influential training rows, highest first (support caps it)
    np.testing.assert_array_equal(result.error_top, np.argsort(-dense, axis=0)[:5].T)
    normalized = kernel_scores(train, psi, InfluenceConfig(damping=0.1), rows_per_chunk=7)
    z = (dense - dense.mean(0)) / dense.std(0)
    np.testing.assert_allclose(normalized.scores, z.sum(1), rtol=1e-3, atol=1e-3)


def test_scores_rank_like_brute_force_exact_gradients(dataset, checkpoint):
    """Projected scores vs exact per-sample gradients (no projection), same kernel formula."""
    ckpt = load_checkpoint(checkpoint[0])
    cfg = InfluenceConfig(k=4096, device="cpu")
    scorer = InfluenceScorer(ckpt.model, None, cfg)
    train, test = dataset.splits["train"], dataset.splits["test"]
    result = scorer.score(ScoreRequest(train, test, SIZE, checkpoint[1], dataset.classes))
    assert result.test_errors, "the random model should make test errors"
    assert set(result.predictions) == {s.relpath for s in test}  # right and wrong ones
    for error in result.test_errors:
        assert result.predictions[error["test"]]["predicted"] == error["predicted"]
        assert len(error["top_train"]) == 5 and set(error["top_train"]) <= set(result.scores)
    right = [p for p in result.predictions.values() if p["predicted"] == p["true"]]
    assert len(right) + len(result.test_errors) == len(test)

    def batch(samples):
        loader = scorer.loader(samples, SIZE)
        images, labels = zip(*loader, strict=True)
        return torch.cat(images), torch.cat(labels)

    by_rel = {s.relpath: s for s in test}
    wrong = [by_rel[e["test"]] for e in result.test_errors]
    g_train = exact_grads(ckpt.model, *batch(train), scorer.names, "margin").double().numpy()
    g_test = exact_grads(ckpt.model, *batch(wrong), scorer.names, "error").double().numpy()
    lam = cfg.damping * (g_train**2).sum() / cfg.k  # trace is kept by the projection
    gram = g_train @ g_train.T  # push-through: Phi (Phi^T Phi + l I)^-1 = (Phi Phi^T + l I)^-1 Phi
    columns = np.linalg.solve(gram + lam * np.eye(len(train)), g_train @ g_test.T)
    reference = ((columns - columns.mean(0)) / columns.std(0)).sum(1)  # "normalized"
    ours = np.array([result.scores[s.relpath] for s in train])
    rho = spearman(ours, reference)
    print(f"spearman {rho:.4f}")
    assert rho > 0.9


# -- scorer, cache ---------------------------------------------------------------------------


def test_cache_is_reused_and_invalidated(dataset, checkpoint, tmp_path):
    ckpt = load_checkpoint(checkpoint[0])
    train, test = dataset.splits["train"], dataset.splits["test"]
    cache = tmp_path / "cache"

    def run(version, cfg=InfluenceConfig(k=32, device="cpu")):
        scorer = InfluenceScorer(ckpt.model, None, cfg)
        request = ScoreRequest(train, test, SIZE, version, dataset.classes, cache_root=cache)
        result = scorer.score(request)
        return scorer.featurized, result

    errors = None
    count, first = run("v1-aaaa")
    errors = len(first.test_errors)
    assert count == len(train) + errors
    features = FeatureCache(cache).folder("v1-aaaa") / "train_features.npy"
    mtime = features.stat().st_mtime_ns
    count, second = run("v1-aaaa")
    assert count == errors  # only the test errors were featurized
    assert features.stat().st_mtime_ns == mtime
    assert second.scores == pytest.approx(first.scores)
    count, _ = run("v2-bbbb")  # a new model version: recomputed, in its own folder
    assert count == len(train) + errors
    count, _ = run("v2-bbbb", InfluenceConfig(k=48, device="cpu"))  # another k: stale
    assert count == len(train) + errors
    meta = json.loads((FeatureCache(cache).folder("v2-bbbb") / "meta.json").read_text())
    assert meta["k"] == 48 and meta["layers"] == ["layer4.1", "fc"]
    count, _ = run("v3-cccc", InfluenceConfig(k=32, device="cpu", keep_versions=2))
    kept = sorted(p.name for p in cache.iterdir())
    assert kept == ["v2-bbbb", "v3-cccc"]  # the oldest version was pruned


def test_float16_cache_matches_float32(tmp_path):
    rng = np.random.default_rng(1)
    block = (rng.standard_normal((10, 6)) * np.logspace(-3, 4, 10)[:, None]).astype(np.float32)
    cache = FeatureCache(tmp_path)
    writer = cache.writer("v1-x", 10, 6, "float16", {"a": 1})
    writer.write(0, block[:4])
    writer.write(4, block[4:])
    stored = writer.finish()
    np.testing.assert_allclose(stored.rows(0, 10), block, rtol=2e-3, atol=0)
    assert cache.load("v1-x", {"a": 1}) is not None
    assert cache.load("v1-x", {"a": 2}) is None


def test_two_processes_writing_the_same_version_at_once_both_finish(tmp_path):
    """Two `simulate`/`influence` runs on one dataset computed the same cache version at once;
    the second's rename found the first's temporary file gone (FileNotFoundError)."""
    block = np.arange(24, dtype=np.float32).reshape(4, 6)
    cache = FeatureCache(tmp_path)
    first = cache.writer("v1-x", 4, 6, "float32", {"a": 1})
    second = cache.writer("v1-x", 4, 6, "float32", {"a": 1})
    first.write(0, block)
    second.write(0, block)
    np.testing.assert_array_equal(first.finish().rows(0, 4), block)
    np.testing.assert_array_equal(second.finish().rows(0, 4), block)
    assert cache.load("v1-x", {"a": 1}) is not None
    assert not list(cache.folder("v1-x").glob("*tmp*"))  # no temporary file left behind


def test_result_explains_and_ranks(dataset, checkpoint):
    ckpt = load_checkpoint(checkpoint[0])
    scorer = InfluenceScorer(ckpt.model, None, InfluenceConfig(k=64, support=3, device="cpu"))
    train = dataset.splits["train"]
    test = dataset.splits["test"]
    result = scorer.score(ScoreRequest(train, test, SIZE, checkpoint[1], dataset.classes, top=5))
    assert isinstance(result, InfluenceResult)
    order = result.ranked()
    assert [result.ranks[r] for r in order] == list(range(1, len(train) + 1))
    assert all(result.scores[a] >= result.scores[b] for a, b in zip(order, order[1:], strict=False))
    assert sorted(result.explains) == sorted(order[:5])
    first = result.explains[order[0]]
    assert 1 <= len(first) <= 3
    assert {"test", "true", "predicted", "value"} <= set(first[0])
    text = result.explain_text(order[0])
    assert text.startswith("drives ") and f"test/{first[0]['test']}" in text
    assert "→" in text


# -- CLI ------------------------------------------------------------------------------------


def test_cli_json_scores_every_training_image(dataset, checkpoint, capsys, tmp_path):
    argv = ["influence", "--data", str(dataset.root), "--checkpoint", str(checkpoint[0])]
    argv += ["--json", "-q", "--k", "64", "--device", "cpu", "--cache-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_version"] == checkpoint[1]
    relpaths = {s.relpath for s in dataset.splits["train"]}
    assert set(printed["scores"]) == relpaths
    assert all(isinstance(v, float) for v in printed["scores"].values())
    out = tmp_path / "scores.json"
    assert cli.main(argv + ["--out", str(out), "--top", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and len(summary["top"]) == 4
    written = json.loads(out.read_text())
    assert set(written["scores"]) == relpaths and len(written["explains"]) == 4
    assert written["scores"] == pytest.approx(printed["scores"], rel=1e-4, abs=1e-6)


def test_cli_text_report_counts_the_classes_of_the_top_images(dataset, checkpoint, capsys):
    argv = ["influence", "--data", str(dataset.root), "--checkpoint", str(checkpoint[0])]
    argv += ["-q", "--k", "64", "--device", "cpu", "--top", "5"]
    assert cli.main(argv) == 0
    mix_line = [line for line in capsys.readouterr().out.splitlines() if "most influential" in line]
    assert mix_line and mix_line[0].startswith("classes of the 5 most influential: ")
    counts = mix_line[0].split(": ", 1)[1].split(", ")
    assert sum(int(item.rsplit(" ", 1)[1]) for item in counts) == 5
    assert {item.rsplit(" ", 1)[0] for item in counts} <= set(dataset.classes)


def test_class_mix_and_the_one_class_hint():
    from robustar_ls.data.folders import classes_among
    from robustar_ls.workflows.influence import one_class_on_top

    mix = classes_among(["b/1.png", "a/2.png", "b/3.png", "c/4.png", "b/5.png", "a/6.png"])
    assert list(mix.items()) == [("b", 3), ("a", 2), ("c", 1)]  # most first, then by name
    assert one_class_on_top(mix, n_classes=3) is None  # 3 of 6 is below three quarters
    top = classes_among(["circle/1.png"] * 15 + ["triangle/2.png"])
    assert one_class_on_top(top, n_classes=4) == "circle"
    assert one_class_on_top(top, n_classes=1) is None  # one class in the dataset: no hint
    assert one_class_on_top({"circle": 1}, n_classes=4) is None  # one image says nothing


def test_cli_label_studio_needs_a_project(dataset, checkpoint, capsys):
    argv = ["influence", "--data", str(dataset.root), "--checkpoint", str(checkpoint[0])]
    argv += ["--label-studio-url", "http://localhost:1", "-q"]
    assert cli.main(argv) == 2
    assert "--project" in capsys.readouterr().err


def test_kernel_scores_defaults_are_the_influence_settings():
    rng = np.random.default_rng(2)
    train = TrainFeatures.from_array(rng.standard_normal((30, 8)).astype(np.float32))
    psi = rng.standard_normal((4, 8)).astype(np.float32)
    default, settings = kernel_scores(train, psi), kernel_scores(train, psi, InfluenceConfig())
    np.testing.assert_array_equal(default.scores, settings.scores)
    np.testing.assert_array_equal(default.top_index, settings.top_index)
    assert default.top_index.shape[1] == min(InfluenceConfig().explain_top, 4)
    with pytest.raises(InfluenceError, match="unknown aggregate"):
        kernel_scores(train, psi, InfluenceConfig(aggregate="mean"))


def test_cli_balance_classes_ranks_in_class_turns_and_keeps_the_scores(
    dataset, checkpoint, capsys, tmp_path
):
    argv = ["influence", "--data", str(dataset.root), "--checkpoint", str(checkpoint[0])]
    argv += ["--json", "-q", "--k", "64", "--device", "cpu", "--cache-dir", str(tmp_path)]
    plain, turns = tmp_path / "plain.json", tmp_path / "turns.json"
    assert cli.main([*argv, "--out", str(plain)]) == 0
    assert cli.main([*argv, "--out", str(turns), "--balance-classes"]) == 0
    capsys.readouterr()
    plain_doc, turns_doc = json.loads(plain.read_text()), json.loads(turns.read_text())
    assert turns_doc["scores"] == pytest.approx(plain_doc["scores"], rel=1e-4, abs=1e-6)
    by_rank = sorted(turns_doc["ranks"], key=turns_doc["ranks"].__getitem__)
    n_classes = len(dataset.classes)
    first_round = {rel.split("/")[0] for rel in by_rank[:n_classes]}
    assert first_round == set(dataset.classes)  # one image of every class first
    for cls in dataset.classes:  # each class keeps the plain order among its own images
        mine = [rel for rel in by_rank if rel.startswith(cls + "/")]
        assert mine == sorted(mine, key=plain_doc["ranks"].__getitem__)
    assert turns_doc["class_turns"] is True and plain_doc["class_turns"] is False
