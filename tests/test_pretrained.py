"""``train --pretrained``: torchvision's ImageNet weights, fetched the torch.hub way from a
loopback server (a fake state dict under a torch.hub file name), or refused in one line."""

from __future__ import annotations

import hashlib
import http.server
import io
import json

import pytest
import torch
import torchvision
from http_support import local_http_server

from robustar_ls.cli import main
from robustar_ls.config import ModelConfig
from robustar_ls.models import pretrained
from robustar_ls.models.checkpoint import load_checkpoint, save_checkpoint
from robustar_ls.models.pretrained import (
    InputNormalization,
    PretrainedUnavailable,
    normalization_of,
    set_normalization,
    weights_file,
)
from robustar_ls.models.zoo import (
    ARCHITECTURES,
    create_classifier,
    imagenet_weights,
    pretrained_architectures,
)
from robustar_ls.train.run import _initial_model

ARCH = "mobilenet_v3_small"  # the smallest torchvision architecture of the zoo
REAL_NAME = "mobilenet_v3_small-047dcff4.pth"  # torchvision's file name (sha256 prefix 047dcff4)


@pytest.fixture(scope="module")
def fake_weights() -> bytes:
    """A state dict shaped like torchvision's ImageNet mobilenet_v3_small, 0.5 everywhere in
    its first convolution (so a test can tell it was loaded)."""
    model = torchvision.models.mobilenet_v3_small(weights=None)
    with torch.no_grad():
        model.features[0][0].weight.fill_(0.5)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache ($TORCH_HOME)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def online(monkeypatch):
    for name in ("ROBUSTAR_LS_OFFLINE", "HF_HUB_OFFLINE"):  # conftest sets the first
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def weights_server(fake_weights, monkeypatch):
    """A loopback server of the fake weights, named the torch.hub way (``name-<sha256[:8]>``),
    standing in for download.pytorch.org; yields the paths it was asked for."""
    hits: list[str] = []
    good = f"{ARCH}-{hashlib.sha256(fake_weights).hexdigest()[:8]}.pth"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(fake_weights)))
            self.end_headers()
            self.wfile.write(fake_weights)

        def log_message(self, *args):
            pass

    with local_http_server(Handler) as url:
        monkeypatch.setattr(pretrained, "weights_url", lambda weights: f"{url}/{good}")
        yield hits


def _train(data, out, *extra, flag="--pretrained"):
    argv = ["train", "--data", str(data), "--out", str(out), "--arch", ARCH]
    return main([*argv, "--epochs", "1", "--image-size", "32", "-q", *extra, flag])


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("robustar-ls train: error:")]


@pytest.mark.parametrize("how", ["environment", "flag", "settings"])
def test_offline_without_cached_weights_fails_in_one_line(
    tiny_dataset, hub, tmp_path, capsys, monkeypatch, how
):
    extra = []
    if how != "environment":
        monkeypatch.delenv("ROBUSTAR_LS_OFFLINE", raising=False)
        settings = tmp_path / "s.yaml"
        settings.write_text("model:\n  pretrained: true\n  offline: true\n")
        extra = ["--offline"] if how == "flag" else ["--config", str(settings)]
    flag = "-q" if how == "settings" else "--pretrained"  # settings: model.pretrained
    assert _train(tiny_dataset, tmp_path / "m.pt", *extra, flag=flag) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"no MobileNet_V3_Small_Weights.IMAGENET1K_V1 weights file at {hub / REAL_NAME}" in line
    assert f"download https://download.pytorch.org/models/{REAL_NAME} on a machine" in line
    assert "--offline" in line and "ROBUSTAR_LS_OFFLINE" in line
    assert not (tmp_path / "m.pt").exists() and not hub.exists()


def test_weights_are_downloaded_once_then_trained_from(
    tiny_dataset, hub, online, weights_server, tmp_path, capsys
):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    assert _train(tiny_dataset, first) == 0
    assert _train(tiny_dataset, second, "--json") == 0  # from the cache
    trained = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the first's line
    assert len(weights_server) == 1 and weights_server[0].startswith(f"/{ARCH}-")
    assert [p.name for p in hub.glob("*.pth")] == [weights_server[0][1:]]
    ckpt = load_checkpoint(second)
    assert ckpt.arch == ARCH and ckpt.image_size == 32 and ckpt.config["model"]["pretrained"]
    assert ckpt.model.classifier[-1].out_features == 3  # the dataset's classes, not ImageNet's
    assert ckpt.normalization.weights == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert ckpt.normalization.is_pipelines  # torchvision's ImageNet mean and std
    argv = ["eval", "--data", str(tiny_dataset), "--checkpoint", str(second), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["splits"] == trained["splits"]


def test_a_failed_download_is_one_line_and_leaves_nothing(
    tiny_dataset, hub, online, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(pretrained, "weights_url", lambda w: f"http://127.0.0.1:9/{REAL_NAME}")
    assert _train(tiny_dataset, tmp_path / "m.pt") == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"cannot download http://127.0.0.1:9/{REAL_NAME}" in line
    assert "on a machine with internet access and copy it to" in line
    assert not (hub / REAL_NAME).exists()


def test_architectures_without_weights_are_refused_listing_those_with(
    tiny_dataset, tmp_path, capsys
):
    argv = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "m.pt"), "--pretrained"]
    assert main([*argv, "--arch", "resnet18_small", "--epochs", "1", "-q"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "'resnet18_small' has no pretrained ImageNet weights" in line
    assert f"--pretrained works with: {', '.join(pretrained_architectures())}" in line
    with pytest.raises(PretrainedUnavailable, match="works with: convnext_tiny"):
        create_classifier("resnet18_small", 3, pretrained=True)


def test_every_torchvision_architecture_of_the_zoo_has_weights():
    assert pretrained_architectures() == sorted(set(ARCHITECTURES) - {"resnet18_small"})
    assert imagenet_weights("resnet18") is torchvision.models.ResNet18_Weights.DEFAULT


def test_cached_weights_load_into_the_backbone_with_a_new_head(hub, fake_weights):
    hub.mkdir(parents=True)
    (hub / REAL_NAME).write_bytes(fake_weights)  # torchvision's name: loading checks no hash
    model = create_classifier(ARCH, 3, pretrained=True)
    assert bool((model.features[0][0].weight == 0.5).all())
    assert model.classifier[-1].out_features == 3
    assert normalization_of(model).weights == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    weights = imagenet_weights(ARCH)
    assert weights_file(weights) == hub / REAL_NAME
    _, _, _, size = _initial_model(None, ModelConfig(arch=ARCH, pretrained=True), 3)
    assert size == 224  # the weights' crop size, where no image size is given


def test_a_cached_file_that_is_not_the_weights_is_one_clear_error(hub):
    hub.mkdir(parents=True)
    (hub / REAL_NAME).write_bytes(b"not a state dict")
    with pytest.raises(PretrainedUnavailable, match="delete it so that it is downloaded again"):
        create_classifier(ARCH, 3, pretrained=True)


def test_another_normalisation_is_applied_and_kept_by_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    plain = create_classifier("resnet18_small", 2, width=4).eval()
    other = InputNormalization((0.5, 0.5, 0.5), (0.25, 0.5, 1.0), "Fake_Weights.V1")
    images01 = torch.rand(2, 3, 16, 16)
    pipeline, own = InputNormalization(), other
    as_pipeline = (images01 - _col(pipeline.mean)) / _col(pipeline.std)
    as_weights = (images01 - _col(own.mean)) / _col(own.std)
    expected = plain(as_weights)
    set_normalization(plain, other)
    assert torch.allclose(plain(as_pipeline), expected, atol=1e-5)
    path = tmp_path / "m.pt"
    save_checkpoint(path, plain, arch="resnet18_small", classes=["a", "b"], image_size=16, width=4)
    loaded = load_checkpoint(path)
    assert loaded.normalization == other
    assert torch.allclose(loaded.model(as_pipeline), expected, atol=1e-5)


def _col(values) -> torch.Tensor:
    return torch.tensor(values).view(1, 3, 1, 1)
