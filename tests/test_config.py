from __future__ import annotations

import argparse

import pytest

from robustar_ls.config import (
    ConfigError,
    TrainConfig,
    build,
    pick,
    read_settings_file,
    secrets_from_env,
)


def test_file_then_flags_override(tmp_path):
    (tmp_path / "s.yaml").write_text("train:\n  epochs: 3\n  lr: 0.1\n")
    section = read_settings_file(tmp_path / "s.yaml")["train"]
    flags = pick(argparse.Namespace(epochs=7, lr=None), TrainConfig)
    cfg = build(TrainConfig, section, flags)
    assert cfg.epochs == 7 and cfg.lr == 0.1 and cfg.batch_size == TrainConfig().batch_size


def test_toml_and_unknown_keys(tmp_path):
    (tmp_path / "s.toml").write_text("[train]\nepochs = 2\n")
    assert read_settings_file(tmp_path / "s.toml") == {"train": {"epochs": 2}}
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        build(TrainConfig, {"epoch": 2})


def test_broken_file_is_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        read_settings_file(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        read_settings_file(tmp_path / "missing.yaml")


def test_secrets_only_from_environment():
    env = {"LABEL_STUDIO_API_KEY": "k", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"}
    assert secrets_from_env(env) == {
        "label_studio_api_key": "k",
        "basic_auth_user": "u",
        "basic_auth_pass": "p",
        "secret": "",
    }
    assert secrets_from_env({"LABEL_STUDIO_USER_TOKEN": "t"})["label_studio_api_key"] == "t"
    assert secrets_from_env({"ROBUSTAR_LS_SECRET": "s"})["secret"] == "s"


@pytest.mark.parametrize("half", [{"BASIC_AUTH_USER": "u"}, {"BASIC_AUTH_PASS": "p"}])
def test_half_set_basic_auth_is_refused_in_one_line(half):
    with pytest.raises(ConfigError, match="set both") as err:
        secrets_from_env(half)
    assert "\n" not in str(err.value)
    assert secrets_from_env({"BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"})["basic_auth_pass"]


def test_serve_composes_the_maskrcnn_and_saliency_settings(tmp_path):
    from robustar_ls.config import MaskRCNNConfig, SaliencyConfig, ServeConfig

    (tmp_path / "s.yaml").write_text(
        "serve:\n"
        "  device: cpu\n"
        "  batch_size: 8\n"
        "  score_threshold: 0.6\n"  # the flat name of older files still works
        "  maskrcnn:\n"
        "    mask_threshold: 0.3\n"
        "    min_region_px: 4\n"
        "    min_size: 512\n"
        "    max_size: 900\n"
        "  saliency:\n"
        "    method: input_gradient\n"
    )
    section = read_settings_file(tmp_path / "s.yaml")["serve"]
    flags = pick(argparse.Namespace(top_fraction=0.2, maskrcnn_weights=None), ServeConfig)
    cfg = build(ServeConfig, section, flags)
    assert cfg.maskrcnn_config() == MaskRCNNConfig(
        weights=None,
        score_threshold=0.6,
        min_region_px=4,
        device="cpu",
        mask_threshold=0.3,
        batch_size=8,
        min_size=512,
        max_size=900,
    )
    assert cfg.saliency_config() == SaliencyConfig(method="input_gradient", top_fraction=0.2)
    assert cfg.top_fraction == 0.2 and cfg.maskrcnn_weights is None
    with pytest.raises(ConfigError, match="unknown setting 'min_sise' for MaskRCNNConfig"):
        build(ServeConfig, {"maskrcnn": {"min_sise": 1}})
    assert build(ServeConfig) == ServeConfig()


def test_older_settings_keys_of_mask_rcnn_still_read():
    """``segmentation:``, ``segmenter:`` and ``segmenter_weights`` (before the Mask R-CNN
    settings were told apart from the learned segmenter's) mean what they did."""
    from robustar_ls.config import ServeConfig

    old = build(
        ServeConfig,
        {"segmentation": {"min_size": 600}, "segmenter": False, "segmenter_weights": "w.pth"},
    )
    new = build(
        ServeConfig,
        {"maskrcnn": {"min_size": 600}, "use_maskrcnn": False, "maskrcnn_weights": "w.pth"},
    )
    assert old == new
    assert (new.maskrcnn.min_size, new.use_maskrcnn, new.maskrcnn_weights) == (600, False, "w.pth")


def test_flags_override_the_nested_file_settings():
    from robustar_ls.config import ServeConfig

    cfg = build(
        ServeConfig,
        {"maskrcnn": {"weights": "a.pth", "min_size": 600}},
        {"maskrcnn_weights": "b.pth"},
    )
    assert cfg.maskrcnn.weights == "b.pth" and cfg.maskrcnn.min_size == 600
