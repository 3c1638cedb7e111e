"""`robustar-ls serve`: flags, settings, secrets from the environment, gunicorn options."""

from __future__ import annotations

import pytest

from robustar_ls.backend.server import GunicornServer, threads_per_worker
from robustar_ls.cli import get_args_parser
from robustar_ls.cli.main import command_parser
from robustar_ls.cli.serve import serve_config


def parse(*argv):
    return get_args_parser().parse_args(["serve", *argv])


def test_serve_flags_and_env_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k3y")
    monkeypatch.setenv("BASIC_AUTH_USER", "u")
    monkeypatch.setenv("BASIC_AUTH_PASS", "p")
    monkeypatch.setenv("ROBUSTAR_LS_SECRET", "s" * 32)
    args = parse(
        "--checkpoint",
        "m.pt",
        "--document-root",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--port",
        "9191",
        "--workers",
        "3",
        "--maskrcnn-weights",
        "w.pth",
        "--no-maskrcnn",
        "--top-fraction",
        "0.2",
    )
    cfg = serve_config(args)
    assert (cfg.checkpoint, cfg.document_root, cfg.host, cfg.port, cfg.workers) == (
        "m.pt",
        str(tmp_path),
        "127.0.0.1",
        9191,
        3,
    )
    assert cfg.maskrcnn_weights == "w.pth" and cfg.use_maskrcnn is False
    assert cfg.top_fraction == 0.2 and cfg.saliency_config().top_fraction == 0.2
    assert cfg.label_studio_api_key == "k3y" and cfg.secret == "s" * 32
    assert (cfg.basic_auth_user, cfg.basic_auth_pass) == ("u", "p")
    assert "k3y" not in repr(cfg) and "s" * 32 not in repr(cfg)
    assert args.debug is False


def test_the_old_mask_rcnn_flags_still_work_and_warn(capsys):
    """``--segmenter-weights`` and ``--no-segmenter`` (before Mask R-CNN and the learned
    segmenter were told apart) do what the new spellings do, with one warning line each."""
    new = serve_config(
        parse("--checkpoint", "m.pt", "--maskrcnn-weights", "w.pth", "--no-maskrcnn")
    )
    assert capsys.readouterr().err == ""
    old = serve_config(
        parse("--checkpoint", "m.pt", "--segmenter-weights", "w.pth", "--no-segmenter")
    )
    err = capsys.readouterr().err.splitlines()
    assert old == new and (old.maskrcnn_weights, old.use_maskrcnn) == ("w.pth", False)
    assert err == [
        "robustar-ls serve: warning: --segmenter-weights is deprecated; use --maskrcnn-weights",
        "robustar-ls serve: warning: --no-segmenter is deprecated; use --no-maskrcnn",
    ]
    assert serve_config(parse("--checkpoint", "m.pt")).use_maskrcnn is True
    assert "--segmenter-weights" not in command_parser("serve").format_help()  # hidden


def test_settings_file_section_then_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    settings = tmp_path / "s.yaml"
    settings.write_text("serve:\n  port: 7000\n  batch_size: 3\n  workers: 2\n")
    cfg = serve_config(parse("--checkpoint", "m.pt", "--config", str(settings), "--workers", "5"))
    assert (cfg.port, cfg.batch_size, cfg.workers) == (7000, 3, 5)


def test_checkpoint_is_required():
    with pytest.raises(SystemExit):
        parse()


def test_gunicorn_options_and_lazy_factory():
    built = []
    server = GunicornServer(
        lambda: built.append(1) or "app", {"bind": "127.0.0.1:9999", "workers": 3, "timeout": 77}
    )
    assert server.cfg.workers == 3 and server.cfg.timeout == 77
    assert server.cfg.bind == ["127.0.0.1:9999"]
    assert built == []  # nothing is built until a worker loads the app
    assert server.load() == "app" and built == [1]
    assert threads_per_worker(1000) == 1


def test_training_jobs_only_with_data(tmp_path, monkeypatch):
    from robustar_ls.cli.serve import serve_training_jobs
    from robustar_ls.workflows.jobs import TrainingJobs

    monkeypatch.delenv("ROBUSTAR_LS_SECRET", raising=False)
    args = parse("--checkpoint", "m.pt", "--cache-dir", str(tmp_path / "c"), "--batch-size", "3")
    assert serve_training_jobs(args, serve_config(args)) is None
    args = parse(
        "--checkpoint",
        "m.pt",
        "--cache-dir",
        str(tmp_path / "c"),
        "--data",
        str(tmp_path),
        "--project",
        "P",
    )
    jobs = serve_training_jobs(args, serve_config(args))
    assert isinstance(jobs, TrainingJobs)
    assert jobs.state_dir == tmp_path / "c" / "training"
    assert jobs.status()["state"] == "idle"
