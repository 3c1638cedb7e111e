"""robustar-ls simulate --rounds: the budget painted in rounds, each round's model re-ranking the
rest; a tiny synthetic dataset, 1 epoch."""

from __future__ import annotations

import json
import logging

import pytest

from robustar_ls.cli import main
from robustar_ls.config import SyntheticConfig, TrainConfig
from robustar_ls.train.recipe import Recipe
from robustar_ls.workflows import simulate as simulate_module
from robustar_ls.workflows import simulate_rounds as rounds_module
from robustar_ls.workflows.simulate import SimulateError
from robustar_ls.workflows.simulate_propagate import with_review_sample
from robustar_ls.workflows.simulate_rounds import _rest, simulate_rounds, split_budget
from tests.data_support import dataset_with_model

TRAIN = TrainConfig(epochs=1, batch_size=8, lr=0.02, device="cpu", augment=False)
FINETUNE = Recipe.only("finetune", TRAIN)  # no review sample: the picks follow the ranking


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-class, 16 px patch dataset (12 train images per class) and a width-4 model."""
    root = tmp_path_factory.mktemp("rounds") / "ds"
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


def cli(tiny, *extra: str) -> list[str]:
    root, ckpt = tiny
    return ["simulate", "--data", str(root), "--checkpoint", str(ckpt), "--epochs", "1",
            "--device", "cpu", "--recipe", "finetune", "-q", *extra]  # fmt: skip


def test_the_budget_is_split_into_equal_shares_the_first_rounds_taking_the_odd_images():
    assert split_budget(7, 3) == [3, 2, 2]
    assert split_budget(6, 3) == [2, 2, 2]
    assert split_budget(3, 3) == [1, 1, 1]
    assert split_budget(5, 1) == [5]
    with pytest.raises(SimulateError, match="at least 1, got 0"):
        split_budget(5, 0)
    with pytest.raises(SimulateError, match="--rounds 4 is more than the budget's 3 images"):
        split_budget(3, 4)


def test_one_round_is_the_one_shot_simulation_itself(monkeypatch):
    calls = []

    def fake(data_root, checkpoint, **options):
        calls.append((data_root, checkpoint, options))
        return {"one": "shot"}

    monkeypatch.setattr(rounds_module, "simulate", fake)
    options = {"order": "loss", "budget": 0.3, "seed": 4, "balance_classes": True}
    assert simulate_rounds("d", "c.pt", rounds=1, **options) == {"one": "shot"}
    assert calls == [("d", "c.pt", options)]  # the same request, nothing added or changed


def test_each_round_ranks_the_rest_with_its_own_model_and_trains_from_the_checkpoint(
    tiny, monkeypatch
):
    root, ckpt = tiny
    before = ckpt.read_bytes()
    ranks, trainings, picks = [], [], []
    real_rank, real_train, real_simulate = (
        rounds_module.rank_images,
        simulate_module.paired_finetune,
        rounds_module.simulate,
    )

    def rank(order, data, model, **kwargs):
        ranks.append((model.version, real_rank(order, data, model, **kwargs)))
        return ranks[-1][1]

    def train(request, **kwargs):
        trainings.append((request.checkpoint, set(request.only or ()), request.from_scratch))
        return real_train(request, **kwargs)

    def simulate(data_root, checkpoint, **options):
        picks.append(options["ranking"][: int(round(options["budget"] * 24))])
        return real_simulate(data_root, checkpoint, **options)

    monkeypatch.setattr(rounds_module, "rank_images", rank)
    monkeypatch.setattr(simulate_module, "paired_finetune", train)
    monkeypatch.setattr(rounds_module, "simulate", simulate)
    result = simulate_rounds(root, ckpt, rounds=3, order="influence", budget=0.25, recipe=FINETUNE)

    entries = result["rounds"]
    assert [e["round"] for e in entries] == [1, 2, 3]
    assert [e["picked"] for e in entries] == [2, 4, 6] and result["picked"] == 6
    # round 1 ranks with the checkpoint, every later round with the model the round before made
    from robustar_ls.models.checkpoint import load_checkpoint

    versions = [load_checkpoint(ckpt).version] + [e["model_version"] for e in entries[:2]]
    assert [version for version, _ in ranks] == versions and len(set(versions)) == 3
    # each round keeps the earlier picks and adds the top 2 of its own ranking among the rest
    assert picks[0] == ranks[0][1][:2]
    for r in (1, 2):
        rest = [rel for rel in ranks[r][1] if rel not in picks[r - 1]]
        assert picks[r] == picks[r - 1] + rest[:2]
    # every round trains from the checkpoint on every mask painted so far
    assert [t[0] for t in trainings] == [ckpt] * 3 and not any(t[2] for t in trainings)
    painted = [t[1] for t in trainings]
    assert painted[0] <= painted[1] <= painted[2] <= set(picks[2])
    assert [e["annotated"] for e in entries] == [len(p) for p in painted]
    # the result is the last round's
    assert result["after"] == entries[-1]["after"] and result["budget"] == 0.25
    assert result["gap_recovered"] == entries[-1]["gap_recovered"]
    assert result["model_version"] == entries[-1]["model_version"]
    assert ckpt.read_bytes() == before


def test_each_round_draws_its_review_sample_from_its_own_share_where_the_recipe_propagates():
    ranking = [f"{c}/{i}.png" for i in range(10) for c in "ab"]  # a/0, b/0, a/1, ...
    picked = ranking[:4]
    plain = _rest(ranking, picked, 4, {"recipe": FINETUNE})
    assert plain == ranking[4:]
    propagating = _rest(ranking, picked, 4, {"recipe": Recipe(), "seed": 2})
    assert propagating == with_review_sample(ranking[4:], 4, 0.25, 2)
    assert propagating[:3] == ranking[4:7] and propagating[3] != ranking[7]  # 1 of 4 reviewed
    asked = {"recipe": FINETUNE, "propagate": 0.5, "review_share": 0.5, "seed": 2}
    assert _rest(ranking, picked, 4, asked)[:2] == ranking[4:6]
    assert _rest(ranking, picked, 4, asked)[2:4] != ranking[6:8]
    ones = ["a/0.png", "a/1.png", "a/2.png", "b/0.png"]
    assert _rest(ones, [], 4, {"recipe": FINETUNE, "balance_classes": True})[:2] == [
        "a/0.png",
        "b/0.png",
    ]


def test_too_many_rounds_or_none_are_clear_errors_before_any_training(tiny, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(simulate_module, "paired_finetune", no_training)
    root, ckpt = tiny
    with pytest.raises(SimulateError, match="--rounds 7 is more than the budget's 6 images"):
        simulate_rounds(root, ckpt, rounds=7, order="random", budget=0.25)
    with pytest.raises(SimulateError, match="more than the budget's 0 images"):
        simulate_rounds(root, ckpt, rounds=2, order="random", budget=0.0)
    with pytest.raises(SimulateError, match="at least 1"):
        simulate_rounds(root, ckpt, rounds=0, order="random", budget=0.25)


def test_cli_refuses_bad_rounds_with_exit_2(tiny, capsys):
    with pytest.raises(SystemExit) as exit_info:  # refused while parsing
        main(cli(tiny, "--order", "random", "--budget", "0.25", "--rounds", "0"))
    assert exit_info.value.code == 2 and "--rounds" in capsys.readouterr().err
    assert main(cli(tiny, "--order", "random", "--budget", "0.25", "--rounds", "7")) == 2
    assert "--rounds 7 is more than the budget's 6 images" in capsys.readouterr().err


def test_cli_json_lists_every_round_and_logs_one_line_per_round(tiny, capsys, caplog):
    caplog.set_level(logging.INFO, logger="robustar_ls.workflows.simulate_rounds")
    code = main(cli(tiny, "--order", "loss", "--budget", "0.25", "--rounds", "2", "--json"))
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["picked"] == 6 and summary["budget"] == 0.25
    entries = summary["rounds"]
    assert [(e["round"], e["picked"]) for e in entries] == [(1, 3), (2, 6)]
    keys = {"annotated", "after", "gap_recovered", "worst_group", "recipe", "model_version"}
    assert keys <= set(entries[0]) and entries[1]["after"] == summary["after"]
    assert entries[0]["recipe"] == "finetune"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("round ")]
    assert [line.split(":")[0] for line in lines] == ["round 1/2", "round 2/2"]
    assert "painted so far" in lines[1] and "gap recovered" in lines[1]


def test_cli_text_prints_a_line_per_round_and_json_keeps_one_shot_unchanged(tiny, capsys):
    assert main(cli(tiny, "--order", "random", "--budget", "0.1", "--rounds", "2")) == 0
    out = capsys.readouterr().out
    assert out.startswith("round 1: 1 of 1 picks") or out.startswith("round 1: 0 of 1 picks")
    assert "\nround 2: " in out and "gap recovered" in out.splitlines()[-1]
    assert main(cli(tiny, "--order", "random", "--budget", "0.1", "--json")) == 0
    assert "rounds" not in json.loads(capsys.readouterr().out)
