"""sync_and_train orchestration with a fake Label Studio client and a fake trainer."""

from __future__ import annotations

import sys
import threading
from types import ModuleType, SimpleNamespace

import httpx
import numpy as np
import pytest

from robustar_ls.cli import main
from robustar_ls.config import LabelStudioConfig, SyncConfig
from robustar_ls.data.masks import MaskStore
from robustar_ls.workflows import sync_train
from robustar_ls.workflows.jobs import TrainingJobs
from robustar_ls.workflows.sync_train import (
    NoMasksError,
    SyncTrainRequest,
    mask_store_lock,
    sync_and_train,
    training_job,
)
from tests.fake_ls import FakeClient, annotation, box, region, task

LS = LabelStudioConfig(url="http://ls.test:1234", api_key="k", project="robustar")


def request(root, masks=None, **settings) -> SyncTrainRequest:
    """The sync-train request for the dataset ``root`` and its checkpoint ``root/m.pt``."""
    return SyncTrainRequest.open(root, root / "m.pt", masks, **settings)


@pytest.fixture
def fake_finetune(monkeypatch):
    calls: list[dict] = []
    module = ModuleType("robustar_ls.train.finetune")

    def paired_finetune(request, progress=None, on_progress=None):
        masks_root = request.masks_root
        calls.append({"masks_root": masks_root, "masks": sorted(MaskStore(masks_root).relpaths())})
        calls[-1]["data"] = request.data
        calls[-1].update(train=request.train, from_scratch=request.from_scratch)
        if request.extra_masks is not None:
            calls[-1]["extra_masks"] = request.extra_masks
        if on_progress:
            on_progress({"phase": "train", "history": request.history})
        return {"model_version": "v2-new", "parent_version": "v1-old", "before": {}, "after": {}}

    from robustar_ls.train.finetune import FinetuneRequest  # the real request, a fake run

    module.FinetuneRequest, module.paired_finetune = FinetuneRequest, paired_finetune
    monkeypatch.setitem(sys.modules, "robustar_ls.train.finetune", module)
    return calls


@pytest.fixture
def client(monkeypatch):
    tasks = [task(1, "a/0.png", [annotation(10, "t", [region(box(0, 2, 0, 2, h=16, w=16))])])]
    fake = FakeClient(tasks)
    monkeypatch.setattr(
        "robustar_ls.labelstudio.client.find_project",
        lambda client, title: SimpleNamespace(id=3, title=title),
    )
    return fake


@pytest.fixture
def data(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        path = tmp_path / "ds" / "train" / cls / "0.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return tmp_path / "ds"


def test_syncs_into_data_masks_then_trains(data, client, fake_finetune):
    summary = sync_and_train(request(data, label_studio=LS), client)
    assert summary["model_version"] == "v2-new" and summary["trained"]
    assert summary["sync"]["added"] == ["a/0.png"]
    (call,) = fake_finetune
    assert (call["masks_root"], call["masks"]) == (data / "masks", ["a/0.png"])
    assert call["from_scratch"] is False  # one painted image: too few to rebuild from


def test_dry_run_previews_and_does_not_train(data, client, fake_finetune):
    summary = sync_and_train(request(data, label_studio=LS, dry_run=True), client)
    assert summary == {"sync": summary["sync"], "trained": False}
    assert summary["sync"]["dry_run"] and summary["sync"]["added"] == ["a/0.png"]
    assert fake_finetune == [] and not MaskStore(data / "masks").has("a/0.png")


def test_no_masks_after_sync_is_a_clear_error(data, client, fake_finetune):
    client.tasks.tasks[0]["annotations"] = []
    with pytest.raises(NoMasksError, match="paint 'Spurious' regions"):
        sync_and_train(request(data, label_studio=LS), client)
    assert fake_finetune == []


def test_without_label_studio_trains_from_given_masks(data, fake_finetune):
    MaskStore(data / "oracle").write("b/0.png", box(0, 1, 0, 1, h=16, w=16))
    summary = sync_and_train(request(data, data / "oracle"))
    assert summary["sync"] is None and fake_finetune[0]["masks"] == ["b/0.png"]


def test_sync_settings_reach_sync_masks(data, client, fake_finetune, monkeypatch):
    seen = {}
    real = sync_train.sync_from_label_studio

    def spy(asked, client=None):
        seen["sync"] = asked.sync
        return real(asked, client)

    monkeypatch.setattr(sync_train, "sync_from_label_studio", spy)
    cfg = SyncConfig(page_size=1, retries=0)
    sync_and_train(request(data, label_studio=LS, sync=cfg), client)
    assert seen["sync"] == cfg and client.tasks.calls == [1]


def test_one_request_opens_the_data_once_and_resolves_the_masks(
    data, client, fake_finetune, monkeypatch
):
    asked = request(data, label_studio=LS)
    assert (asked.masks_root, asked.checkpoint) == (data / "masks", data / "m.pt")
    assert SyncTrainRequest.open(asked.data, data / "m.pt").data is asked.data  # not reopened
    assert request(data, data / "oracle").masks_root == data / "oracle"
    synced = []
    real = sync_train.sync_from_label_studio

    def spy(asked, client=None):
        synced.append(asked.data)
        return real(asked, client)

    monkeypatch.setattr(sync_train, "sync_from_label_studio", spy)
    sync_and_train(asked, client)
    assert synced == [asked.data] and fake_finetune[0]["data"] is asked.data


def test_mask_store_lock_serialises(tmp_path):
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def first():
        with mask_store_lock(tmp_path / "masks"):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    second = threading.Thread(target=lambda: _enter(tmp_path, order))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # blocked while the first holds the lock
    release.set()
    thread.join(10)
    second.join(10)
    assert order == ["first in", "first out", "second in"]


def _enter(tmp_path, order):
    with mask_store_lock(tmp_path / "masks"):
        order.append("second in")


def test_training_job_runs_sync_and_train_in_the_background(
    data, client, fake_finetune, monkeypatch
):
    monkeypatch.setattr("robustar_ls.labelstudio.client.connect", lambda url, key: client)
    jobs = TrainingJobs(
        training_job(lambda: request(data, label_studio=LS)), state_dir=data / "state"
    )
    started, _ = jobs.start({"action": "START_TRAINING"})
    # generous: the job imports torch and trains the segmenter (~30 s on a loaded machine)
    status = jobs.wait(180)
    assert started and status["state"] == "succeeded", status
    assert status["result"]["model_version"] == "v2-new"
    assert status["result"]["sync"]["added"] == ["a/0.png"]
    # the job reported the sync, then handed its progress callback and the sync to training
    assert status["progress"]["phase"] == "train"
    assert status["progress"]["history"]["sync"]["added"] == 1


def test_training_job_builds_each_jobs_request(data, monkeypatch):
    """Each job opens the dataset again (new images count) and reports to its own callback."""
    seen = []
    monkeypatch.setattr(sync_train, "sync_and_train", lambda asked: seen.append(asked) or {})
    run = training_job(lambda: request(data))
    run({}, None)
    run({"action": "START_TRAINING"}, print)
    assert seen[0].data is not seen[1].data and seen[1].data.root == data.resolve()
    assert seen[0].on_progress is None and seen[1].on_progress is print


def test_serve_training_jobs_request_from_the_backend_settings(data, tmp_path, monkeypatch):
    from robustar_ls.cli import get_args_parser
    from robustar_ls.cli.serve import serve_config, serve_training_jobs

    monkeypatch.delenv("ROBUSTAR_LS_SECRET", raising=False)
    argv = ["serve", "--checkpoint", str(data / "m.pt"), "--data", str(data), "--project", "P"]
    args = get_args_parser().parse_args([*argv, "--cache-dir", str(tmp_path / "c")])
    seen = []
    monkeypatch.setattr(sync_train, "sync_and_train", lambda asked: seen.append(asked) or {})
    jobs = serve_training_jobs(args, serve_config(args))
    jobs.start({})
    assert jobs.wait(30)["state"] == "succeeded"
    (asked,) = seen
    assert (asked.masks_root, asked.checkpoint) == (data / "masks", data / "m.pt")
    assert asked.label_studio.project == "P" and not asked.dry_run
    assert asked.on_progress is not None  # the job's progress records


def test_sync_and_train_reports_the_sync_phase_first(data, client, fake_finetune):
    records: list[dict] = []
    sync_and_train(request(data, label_studio=LS, on_progress=records.append), client)
    assert [r["phase"] for r in records] == ["sync", "train"]
    assert records[0]["fraction"] == 0.0


def test_training_job_failure_is_reported_in_the_status(data, client, fake_finetune, monkeypatch):
    monkeypatch.setattr("robustar_ls.labelstudio.client.connect", lambda url, key: client)
    client.tasks.fail[1] = httpx.ConnectError("connection refused")
    sync = SyncConfig(retries=1, backoff=0.0)
    jobs = TrainingJobs(training_job(lambda: request(data, label_studio=LS, sync=sync)))
    jobs.start({})
    status = jobs.wait(30)
    assert status["state"] == "failed" and "stopped answering" in status["error"]
    assert fake_finetune == []


def test_cli_flag_errors(data, monkeypatch, capsys):
    base = ["sync-train", "--data", str(data), "--checkpoint", str(data / "m.pt")]
    assert main([*base, "--dry-run"]) == 2
    assert "--dry-run and --project need --label-studio-url" in capsys.readouterr().err
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_USER_TOKEN", raising=False)
    assert main([*base, "--label-studio-url", "http://ls.test:1"]) == 2
    assert "set LABEL_STUDIO_API_KEY" in capsys.readouterr().err


def test_sync_train_fine_tunes_with_gentler_defaults_than_train(
    monkeypatch, data, tmp_path, capsys
):
    """sync-train without flags uses FINETUNE_DEFAULTS; flags and settings files still win."""
    from robustar_ls.config import FINETUNE_DEFAULTS

    seen = []

    def fake_sync_and_train(asked, client=None):
        seen.append(asked.recipe.finetune)
        keys = ("model_version", "parent_version", "annotated", "loss_terms", "out")
        return {**dict.fromkeys(keys, ""), "before": {}, "after": {}, "sync": None, "trained": 1}

    monkeypatch.setattr(sync_train, "sync_and_train", fake_sync_and_train)
    argv = ["sync-train", "--data", str(data), "--checkpoint", "m.pt", "-q", "--json"]
    assert main(argv) == 0
    assert main([*argv, "--lr", "0.3"]) == 0
    (tmp_path / "s.yaml").write_text("train:\n  batch_size: 4\n")
    assert main([*argv, "--config", str(tmp_path / "s.yaml")]) == 0
    capsys.readouterr()
    assert (seen[0].lr, seen[0].batch_size, seen[0].epochs) == (
        FINETUNE_DEFAULTS["lr"],
        FINETUNE_DEFAULTS["batch_size"],
        FINETUNE_DEFAULTS["epochs"],
    )
    assert seen[1].lr == 0.3 and seen[2].batch_size == 4


# -- the learned segmenter after a sync (workflows/segmenter_step.py) ------------------------


def test_a_sync_that_changed_masks_retrains_the_segmenter(data, client, fake_finetune):
    from robustar_ls.models.spurious_segmenter import (
        default_segmenter_path,
        load_spurious_segmenter,
    )

    first = sync_and_train(request(data, label_studio=LS), client)["segmenter"]
    saved = load_spurious_segmenter(default_segmenter_path(data))
    assert first["retrained"] and first["version"] == saved.version
    assert saved.trained_on == ["a/0.png"]
    again = sync_and_train(request(data, label_studio=LS), client)["segmenter"]
    assert not again["retrained"] and again["version"] == saved.version  # nothing changed


def test_segmenter_retrain_can_be_switched_off(data, client, fake_finetune):
    from robustar_ls.config import TrainConfig
    from robustar_ls.models.spurious_segmenter import default_segmenter_path
    from robustar_ls.train.recipe import Recipe
    from robustar_ls.workflows.segmenter_step import SegmenterStep

    finetune = Recipe.only("finetune", TrainConfig())  # auto would train one to propagate
    asked = request(data, label_studio=LS, segmenter=SegmenterStep(False), recipe=finetune)
    summary = sync_and_train(asked, client)
    assert summary["segmenter"]["retrained"] is False and summary["segmenter"]["version"] is None
    assert not default_segmenter_path(data).exists()


def test_propagate_pairs_unannotated_images_and_expert_masks_win(data, fake_finetune):
    import torch

    from robustar_ls.config import SpuriousSegmenterConfig
    from robustar_ls.models.spurious_segmenter import SpuriousSegmenter, default_segmenter_path
    from robustar_ls.workflows.segmenter_step import SegmenterStep

    seg = SpuriousSegmenter.create(SpuriousSegmenterConfig(size=16))
    last = [m for m in seg.net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # every pixel spurious, confidently
        last.weight.zero_()
        last.bias.fill_(6.0)
    version = seg.save(default_segmenter_path(data))
    MaskStore(data / "oracle").write("a/0.png", box(0, 1, 0, 1, h=16, w=16))
    step = SegmenterStep(propagate=True, threshold=0.9)
    summary = sync_and_train(request(data, data / "oracle", segmenter=step))
    extra = fake_finetune[0]["extra_masks"]
    assert set(extra) == {"b/0.png"}  # a/0.png has the expert's mask
    assert MaskStore(data / ".robustar" / "propagated_masks").read("b/0.png").all()
    prop = summary["segmenter"]["propagation"]
    assert prop["propagated"] == 1 and prop["expert_kept"] == 1
    assert summary["segmenter"]["version"] == version and not summary["segmenter"]["retrained"]


def test_cli_segmenter_flags(monkeypatch):
    import argparse

    from robustar_ls.cli import sync_train as cli_sync_train
    from robustar_ls.train.propagate import DEFAULT_THRESHOLD

    p = argparse.ArgumentParser()
    cli_sync_train.add_segmenter_flags(p)
    step = cli_sync_train.segmenter_step(p.parse_args([]))
    assert step.retrain and not step.propagate and step.threshold == DEFAULT_THRESHOLD
    args = ["--no-segmenter-retrain", "--propagate", "--propagate-threshold", "0.8"]
    step = cli_sync_train.segmenter_step(p.parse_args(args))
    assert not step.retrain and step.propagate and step.threshold == 0.8


# -- the recipe (train/recipe.py): rebuild when the masks spread, else fine-tune --------------


def _constant_segmenter(root, logit: float) -> None:
    """A learned segmenter file that calls every pixel spurious (logit > 0) or none (< 0)."""
    import torch

    from robustar_ls.config import SpuriousSegmenterConfig
    from robustar_ls.models.spurious_segmenter import SpuriousSegmenter, default_segmenter_path

    seg = SpuriousSegmenter.create(SpuriousSegmenterConfig(size=16))
    last = [m for m in seg.net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(logit)
    seg.save(default_segmenter_path(root))


@pytest.fixture
def eight(tmp_path):
    """Two classes of four 16 px images, three of them painted in ``<root>/oracle``."""
    from PIL import Image

    root = tmp_path / "eight"
    for cls in ("a", "b"):
        for i in range(4):
            path = root / "train" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(path)
    for rel in ("a/0.png", "a/1.png", "b/0.png"):
        MaskStore(root / "oracle").write(rel, box(0, 8, 0, 8, h=16, w=16))
    return root


def test_auto_rebuilds_from_scratch_when_the_masks_spread(eight, fake_finetune):
    from robustar_ls.train.recipe import REBUILD_DEFAULTS

    _constant_segmenter(eight, 6.0)  # finds the cue on every other image
    summary = sync_and_train(request(eight, eight / "oracle"))
    call = fake_finetune[0]
    assert call["from_scratch"] is True and call["train"].epochs == REBUILD_DEFAULTS["epochs"]
    assert len(call["extra_masks"]) == 5  # every unpainted image is paired
    assert summary["recipe"]["name"] == "rebuild" and summary["recipe"]["asked"] == "auto"
    assert "3 painted, 5 propagated, of 8 images" in summary["recipe"]["reason"]


def test_auto_fine_tunes_on_the_painted_masks_when_they_do_not_spread(eight, fake_finetune):
    from robustar_ls.config import FINETUNE_DEFAULTS

    _constant_segmenter(eight, -6.0)  # finds nothing anywhere
    summary = sync_and_train(request(eight, eight / "oracle"))
    call = fake_finetune[0]
    assert call["from_scratch"] is False and call["train"].epochs == FINETUNE_DEFAULTS["epochs"]
    assert "extra_masks" not in call and call["masks"] == ["a/0.png", "a/1.png", "b/0.png"]
    assert summary["recipe"]["name"] == "finetune"


def test_finetune_recipe_keeps_propagated_masks_only_when_asked(eight, fake_finetune):
    from robustar_ls.config import TrainConfig
    from robustar_ls.train.recipe import Recipe
    from robustar_ls.workflows.segmenter_step import SegmenterStep

    _constant_segmenter(eight, 6.0)
    finetune = Recipe.only("finetune", TrainConfig(epochs=2))
    sync_and_train(request(eight, eight / "oracle", recipe=finetune))
    asked = SegmenterStep(propagate=True)
    sync_and_train(request(eight, eight / "oracle", recipe=finetune, segmenter=asked))
    plain, propagated = fake_finetune
    assert "extra_masks" not in plain and len(propagated["extra_masks"]) == 5
    assert not plain["from_scratch"] and not propagated["from_scratch"]
    assert plain["train"].epochs == 2


def test_cli_recipe_flag_reaches_the_job(monkeypatch, data, capsys):
    seen = []

    def fake_sync_and_train(asked, client=None):
        seen.append(asked.recipe)
        keys = ("model_version", "parent_version", "annotated", "loss_terms", "out")
        return {**dict.fromkeys(keys, ""), "before": {}, "after": {}, "sync": None, "trained": 1}

    monkeypatch.setattr(sync_train, "sync_and_train", fake_sync_and_train)
    argv = ["sync-train", "--data", str(data), "--checkpoint", "m.pt", "-q", "--json"]
    for flags in ([], ["--recipe", "finetune"], ["--from-scratch"], ["--epochs", "4"]):
        assert main([*argv, *flags]) == 0
    capsys.readouterr()
    assert [r.name for r in seen] == ["auto", "finetune", "rebuild", "auto"]
    assert seen[3].finetune.epochs == seen[3].rebuild.epochs == 4
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--recipe", "bogus"])
    assert exit_info.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


REASON = "rebuild: the masks spread (40 painted, 500 propagated)"


def test_text_summary_says_the_recipe_and_the_group_metrics():
    from robustar_ls.cli.sync_train import _text_summary

    summary = {
        "trained": True, "sync": None, "out": "m.pt", "model_version": "v2-b", "annotated": 40,
        "parent_version": "v1-a", "before": {"val": 0.9, "test": 0.2},
        "after": {"val": 0.95, "test": 0.9},
        "recipe": {"name": "rebuild", "reason": REASON},
        "groups": {"before": {"test": {"worst_group": 0.0}},
                   "after": {"test": {"worst_group": 0.8}}},
    }  # fmt: skip
    lines = _text_summary(summary).splitlines()
    assert lines[1] == f"  recipe: {REASON}"
    assert lines[-1] == "  test: worst group 0.000→0.800"
    del summary["recipe"], summary["groups"]  # an older summary: no such lines
    assert len(_text_summary(summary).splitlines()) == 3


def test_json_summary_carries_the_recipe_groups_and_saliency_share():
    from robustar_ls.cli.sync_train import _json_summary

    keys = ("model_version", "parent_version", "before", "after", "annotated", "loss_terms")
    summary = {**dict.fromkeys(keys, ""), "out": "m.pt", "sync": None, "trained": True}
    summary.update(
        recipe={"name": "rebuild", "reason": REASON, "asked": "auto"},
        groups={"before": None, "after": {"test": {"worst_group": 0.8}}},
        saliency_in_masks={"before": 0.6, "after": 0.1},
    )
    out = _json_summary(summary)
    assert out["recipe"]["name"] == "rebuild" and out["saliency_in_masks"]["after"] == 0.1
    assert out["groups"]["after"]["test"]["worst_group"] == 0.8
