"""robustar-ls simulate: the simulated annotator on a tiny synthetic dataset, 1 epoch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from robustar_ls.cli import main
from robustar_ls.config import PairedConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.models.checkpoint import load_checkpoint
from robustar_ls.train.recipe import Recipe
from robustar_ls.workflows.simulate import (
    SimulateError,
    gap_recovered,
    loss_ranking,
    random_ranking,
    rank_images,
    simulate,
)
from robustar_ls.workflows.simulate_propagate import DEFAULT_REVIEW_SHARE, with_review_sample
from tests.data_support import dataset_with_model

TRAIN = TrainConfig(epochs=1, batch_size=8, lr=0.02, device="cpu", augment=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-class, 16 px patch dataset (12 train images per class) and a width-4 model."""
    root = tmp_path_factory.mktemp("simulate") / "ds"
    cfg = SyntheticConfig(
        kind="patch",
        size=16,
        per_class=12,
        val_per_class=4,
        test_per_class=4,
        classes=2,
        spurious_fraction=0.5,
    )
    return dataset_with_model(root, cfg, TRAIN)


def run(tiny, **kwargs):
    root, ckpt = tiny
    kwargs.setdefault("recipe", Recipe.only("finetune", TRAIN))  # the recipe has its own tests
    return simulate(root, ckpt, **kwargs)


def test_budget_zero_is_plain_finetuning_and_leaves_the_checkpoint(tiny, tmp_path):
    root, ckpt = tiny
    before = ckpt.read_bytes()
    out = tmp_path / "new.pt"
    result = run(tiny, order="influence", budget=0.0, out=out)
    assert ckpt.read_bytes() == before
    assert (result["picked"], result["annotated"], result["spurious_annotated"]) == (0, 0, 0)
    assert load_checkpoint(out).parent_version == load_checkpoint(ckpt).version
    assert set(result["after"]) == {"train", "val", "test"}
    assert result["gap_recovered"] == gap_recovered(result["before"], result["after"])


def test_random_budget_annotates_the_picked_images_with_masks(tiny):
    root, ckpt = tiny
    result = run(tiny, order="random", budget=0.25, seed=3)
    assert result["picked"] == 6  # round(0.25 x 24)
    status = json.loads((root / "spurious.json").read_text())
    picked = random_ranking(ImageFolderSplits.open(root).splits["train"], 3)[:6]
    carrying = sum(status[rel] != "none" for rel in picked)
    assert 0 < carrying < 6  # the seed picks both kinds, so the next line can fail
    # every image has an oracle mask, but nothing is painted on a neutral one
    assert result["annotated"] == result["spurious_annotated"] == carrying
    assert result["out"] is None
    assert ckpt.exists()


def test_a_picked_image_without_a_mask_costs_budget_and_adds_nothing(tiny, tmp_path):
    root, _ = tiny
    masks = tmp_path / "masks"
    shutil.copytree(root / "oracle_masks", masks)
    status = json.loads((root / "spurious.json").read_text())
    samples = ImageFolderSplits.open(root).splits["train"]
    carrying = [s.relpath for s in samples if status[s.relpath] != "none"]
    ranking = carrying + [s.relpath for s in samples if s.relpath not in carrying]
    for rel in ranking[:2]:  # the first two picked images lose their reference mask
        (masks / "train" / rel).unlink()
    result = run(tiny, order="random", budget=0.25, masks=masks, ranking=ranking)
    assert len(carrying) >= 3  # so that at least one picked image keeps its mask
    assert (result["picked"], result["annotated"]) == (6, min(6, len(carrying)) - 2)


def test_orders_are_permutations_and_random_is_seeded(tiny):
    root, ckpt_path = tiny
    data = ImageFolderSplits.open(root)
    ckpt = load_checkpoint(ckpt_path, classes=data.classes)
    everything = sorted(s.relpath for s in data.splits["train"])
    for order in ("influence", "random", "loss"):
        assert sorted(rank_images(order, data, ckpt, seed=1)) == everything
    samples = data.splits["train"]
    assert random_ranking(samples, 1) == random_ranking(samples, 1)
    assert random_ranking(samples, 1) != random_ranking(samples, 2)


def test_loss_order_puts_the_highest_loss_first(tiny):
    import torch
    from torch.nn import functional as F

    from robustar_ls.train.run import make_loader

    root, ckpt_path = tiny
    samples = ImageFolderSplits.open(root).splits["train"]
    ckpt = load_checkpoint(ckpt_path)
    with torch.no_grad():
        images, labels = next(iter(make_loader(samples, 16, len(samples))))
        losses = F.cross_entropy(ckpt.model.eval()(images), labels, reduction="none")
    by_rel = {s.relpath: float(loss) for s, loss in zip(samples, losses, strict=True)}
    ranked = [by_rel[rel] for rel in loss_ranking(ckpt, samples)]
    assert ranked == sorted(ranked, reverse=True)


def test_gap_recovered_formula():
    before = {"train": 1.0, "val": 0.9, "test": 0.4}
    assert gap_recovered(before, {"test": 0.65}) == pytest.approx(0.5)
    assert gap_recovered({"train": 0.9, "test": 0.3}, {"test": 0.6}) == pytest.approx(0.5)
    assert gap_recovered({"val": 0.5, "test": 0.6}, {"test": 0.7}) is None  # no gap


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order": "alphabetical", "budget": 0.1}, "unknown order"),
        ({"order": "random", "budget": 1.5}, "budget"),
    ],
)
def test_bad_requests_are_clear_errors(tiny, kwargs, message):
    with pytest.raises(SimulateError, match=message):
        run(tiny, **kwargs)


def test_cli_prints_the_json_summary(tiny, tmp_path, capsys):
    root, ckpt = tiny
    before = ckpt.read_bytes()
    code = main(
        ["simulate", "--data", str(root), "--checkpoint", str(ckpt), "--order", "loss"]
        + ["--budget", "0.1", "--epochs", "1", "--device", "cpu", "--fill", "black"]
        + ["--out", str(tmp_path / "s.pt"), "--json", "-q"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    keys = {"order", "budget", "annotated", "spurious_annotated", "before", "after"}
    assert keys | {"gap_recovered"} <= set(summary)
    assert (summary["order"], summary["picked"]) == ("loss", 2)
    assert ckpt.read_bytes() == before
    assert load_checkpoint(tmp_path / "s.pt").config["paired"] == {
        **PairedConfig().__dict__,
        "fill": "black",
    }


def test_cli_bad_budget_exits_2(tiny, capsys):
    root, ckpt = tiny
    argv = ["simulate", "--data", str(root), "--checkpoint", str(ckpt), "--order", "random"]
    with pytest.raises(SystemExit) as exit_info:  # refused while parsing, before any work
        main([*argv, "--budget", "-0.5", "-q"])
    assert exit_info.value.code == 2
    assert "budget" in capsys.readouterr().err


def test_propagate_pairs_the_unpicked_images_with_the_learned_segmenter(tiny, monkeypatch):
    from robustar_ls.workflows import simulate as simulate_module

    seen = {}
    real = simulate_module.paired_finetune

    def spy(request, **kwargs):
        seen["extra"] = dict(request.extra_masks or {})
        return real(request, **kwargs)

    monkeypatch.setattr(simulate_module, "paired_finetune", spy)
    result = run(tiny, order="random", budget=0.25, seed=3, propagate=0.0)
    ranking = random_ranking(ImageFolderSplits.open(tiny[0]).splits["train"], 3)
    picked = set(with_review_sample(ranking, 6, DEFAULT_REVIEW_SHARE, 3)[:6])
    assert picked != set(ranking[:6])  # 2 of the 6 picks went to the review sample
    prop = result["propagation"]
    assert prop["expert_kept"] == 6 and prop["predicted"] == 18  # picked images: never predicted
    assert prop["propagated"] == len(seen["extra"]) and not picked & set(seen["extra"])
    assert prop["trained_on"] == 6 and prop["segmenter_version"] is None  # in memory only
    assert run(tiny, order="random", budget=0.25, seed=3)["propagation"] is None


def test_review_sample_replaces_the_last_picks_by_a_seeded_draw_from_the_rest():
    ranking = [f"c/{i}.png" for i in range(20)]
    out = with_review_sample(ranking, 8, 0.25, seed=1)
    assert out[:6] == ranking[:6] and sorted(out) == sorted(ranking)  # a reordering, nothing lost
    assert set(out[6:8]) <= set(ranking[6:]) and out == with_review_sample(ranking, 8, 0.25, 1)
    assert out[6:8] != ranking[6:8]
    assert with_review_sample(ranking, 8, 0.0, seed=1) == ranking
    assert with_review_sample(ranking, 8, 1.0, seed=1)[:8] != ranking[:8]
    with pytest.raises(ValueError, match="within"):
        with_review_sample(ranking, 8, 1.5, seed=1)


def test_class_turns_alternate_the_classes_and_keep_each_class_order():
    from robustar_ls.data.folders import in_class_turns

    ranking = ["0/2.png", "0/0.png", "0/1.png", "1/1.png", "1/0.png", "1/2.png"]  # class 0 first
    turns = in_class_turns(ranking)
    assert turns == ["0/2.png", "1/1.png", "0/0.png", "1/0.png", "0/1.png", "1/2.png"]
    assert in_class_turns(ranking[:4]) == ["0/2.png", "1/1.png", "0/0.png", "0/1.png"]
    assert in_class_turns(["b/1.png", "a/1.png", "b/2.png"]) == ["b/1.png", "a/1.png", "b/2.png"]
    assert in_class_turns([]) == []


def test_balance_classes_flag_reaches_simulate_and_its_json(tiny, capsys):
    root, ckpt = tiny
    code = main(
        ["simulate", "--data", str(root), "--checkpoint", str(ckpt), "--order", "random",
         "--budget", "0.25", "--balance-classes", "--epochs", "1", "--json", "--quiet",
         "--recipe", "finetune"]  # no review sample among the picks
    )  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["balance_classes"] is True and summary["picked"] == 6
    # class name -> picked images; with the classes taking turns, 3 of each of the 2 classes
    assert summary["picked_classes"] == dict.fromkeys(ImageFolderSplits.open(root).classes, 3)
    assert run(tiny, order="random", budget=0.0)["balance_classes"] is False


def test_false_positive_area_counts_marks_on_unpicked_images_without_the_feature():
    from robustar_ls.workflows.simulate_propagate import false_positive_area

    half = np.zeros((4, 4), bool)
    half[:2] = True
    masks = {"a/0.png": half, "a/1.png": np.ones((4, 4), bool), "a/2.png": half}
    status = {"a/0.png": "none", "a/1.png": "aligned", "a/2.png": "none", "a/3.png": "none"}
    # a/0 half marked, a/3 no mask (0); a/1 carries the feature; a/2 was picked (the expert's)
    assert false_positive_area(masks, status, picked={"a/2.png"}) == 0.25
    assert false_positive_area(masks, {"a/1.png": "aligned"}, set()) is None
