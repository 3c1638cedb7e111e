"""``--from-scratch``: paired training of the checkpoint's architecture from its initial
weights (for a shortcut that every training image carries), not fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustar_ls import cli
from robustar_ls.config import PairedConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.models.checkpoint import load_checkpoint, read_version, save_checkpoint
from robustar_ls.models.zoo import create_classifier
from robustar_ls.train.finetune import FinetuneRequest, initial_model, paired_finetune
from robustar_ls.train.recipe import REBUILD_DEFAULTS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scratch") / "data"
    cfg = SyntheticConfig(
        kind="patch", size=16, per_class=6, test_per_class=3, val_per_class=3, classes=2
    )
    make_dataset(root, cfg)
    return root


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(123)  # other weights than the seed the training starts from
    path = tmp_path / "model.pt"
    model = create_classifier("resnet18_small", 2, width=4)
    save_checkpoint(
        path, model, arch="resnet18_small", classes=["circle", "square"], image_size=16, width=4
    )
    return path


def _conv_weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat(
        [m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    )


def test_from_scratch_starts_from_the_initial_weights_and_keeps_the_parent(
    dataset, checkpoint, tmp_path
):
    parent = load_checkpoint(checkpoint)
    still = TrainConfig(epochs=1, batch_size=8, lr=1e-9, weight_decay=0.0, device="cpu", seed=5)
    out = tmp_path / "scratch.pt"
    result = paired_finetune(
        FinetuneRequest(
            dataset,
            checkpoint,
            dataset / "oracle_masks",
            PairedConfig(),
            still,
            out=out,
            from_scratch=True,
        )
    )
    saved = load_checkpoint(out)
    torch.manual_seed(5)
    fresh = _conv_weights(initial_model(parent))
    trained = _conv_weights(saved.model)
    assert torch.allclose(trained, fresh, atol=1e-6)  # lr 1e-9: still the seeded initial weights
    assert not torch.allclose(trained, _conv_weights(parent.model), atol=1e-3)
    assert saved.parent_version == parent.version == result["parent_version"]
    assert saved.config["from_scratch"] is True
    assert (saved.arch, saved.width, saved.classes) == (parent.arch, parent.width, parent.classes)


def test_fine_tuning_starts_from_the_checkpoint(dataset, checkpoint, tmp_path):
    parent = load_checkpoint(checkpoint)
    still = TrainConfig(epochs=1, batch_size=8, lr=1e-9, weight_decay=0.0, device="cpu", seed=5)
    out = tmp_path / "tuned.pt"
    paired_finetune(
        FinetuneRequest(
            dataset, checkpoint, dataset / "oracle_masks", PairedConfig(), still, out=out
        )
    )
    saved = load_checkpoint(out)
    assert torch.allclose(_conv_weights(saved.model), _conv_weights(parent.model), atol=1e-6)
    assert saved.config["from_scratch"] is False


def test_cli_from_scratch_trains_and_reports_it(dataset, checkpoint, capsys):
    argv = ["simulate", "--data", str(dataset), "--checkpoint", str(checkpoint), "--order",
            "random", "--budget", "0.5", "--from-scratch", "--epochs", "1", "--device", "cpu",
            "--json", "-q"]  # fmt: skip
    version = read_version(checkpoint)
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["from_scratch"] is True and summary["annotated"] >= 1
    assert summary["recipe"]["name"] == summary["recipe"]["asked"] == "rebuild"
    assert read_version(checkpoint) == version  # never modified


@pytest.mark.parametrize(
    ("flags", "how"),
    [
        (["--recipe", "finetune"], "paired fine-tuning"),
        (["--from-scratch"], "paired training from scratch"),
        (["--recipe", "rebuild"], "paired training from scratch"),
    ],
)
def test_cli_text_summary_says_how_it_trained(dataset, checkpoint, capsys, flags, how):
    argv = ["simulate", "--data", str(dataset), "--checkpoint", str(checkpoint), "--order",
            "random", "--budget", "0.5", "--epochs", "1", "--device", "cpu", "-q"]  # fmt: skip
    assert cli.main([*argv, *flags]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(f"spurious), {how}"), first


@pytest.mark.parametrize(
    ("flags", "name", "finetune", "rebuild"),
    [
        ([], "auto", (12, 0.02), (REBUILD_DEFAULTS["epochs"], REBUILD_DEFAULTS["lr"])),
        (["--from-scratch"], "rebuild", (12, 0.02), (20, 0.05)),
        (["--recipe", "finetune", "--epochs", "3"], "finetune", (3, 0.02), (3, 0.05)),
    ],
)
def test_cli_recipe_and_its_schedules(
    dataset, checkpoint, monkeypatch, flags, name, finetune, rebuild
):
    import robustar_ls.workflows.simulate as workflow

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        return {}

    import robustar_ls.workflows.simulate_rounds as rounds

    monkeypatch.setattr(workflow, "simulate", fake)
    monkeypatch.setattr(rounds, "simulate", fake)  # the CLI reaches it through the rounds
    argv = ["simulate", "--data", str(dataset), "--checkpoint", str(checkpoint), "--order",
            "random", "--budget", "0.5", "--json", "-q", *flags]  # fmt: skip
    assert cli.main(argv) == 0
    recipe = seen["recipe"]
    assert recipe.name == name
    assert (recipe.finetune.epochs, recipe.finetune.lr) == finetune
    assert (recipe.rebuild.epochs, recipe.rebuild.lr) == rebuild
