"""``robustar-ls serve``: the Label Studio ML backend under gunicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from robustar_ls.cli.options import (
    DeprecatedFlag,
    UserError,
    add_label_studio_url,
    settings_section,
)
from robustar_ls.cli.validators import (
    fraction,
    non_negative_int,
    port_number,
    positive_float,
    positive_int,
)
from robustar_ls.config import (
    FINETUNE_DEFAULTS,
    InfluenceConfig,
    LabelStudioConfig,
    PairedConfig,
    PrefetchConfig,
    ServeConfig,
    SyncConfig,
    TrainConfig,
    build,
    pick,
    secrets_from_env,
)
from robustar_ls.models.weights_download import offline_from_env

log = logging.getLogger(__name__)

NAME = "serve"
HELP = "run the Label Studio ML backend (gunicorn)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="classifier checkpoint to serve")
    p.add_argument(
        "--document-root",
        dest="document_root",
        default=None,
        help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT: /data/local-files/ images are read here",
    )
    add_label_studio_url(p, help="Label Studio URL (image downloads, Start Training)")
    p.add_argument(
        "--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 = all)"
    )
    p.add_argument("--port", type=port_number, default=None, help="default 9090")
    p.add_argument("--workers", type=positive_int, default=None, help="gunicorn worker processes")
    add_hardening_flags(p)
    add_maskrcnn_flags(p)
    add_spurious_flag(p)
    p.add_argument("--score-threshold", dest="score_threshold", type=fraction, default=None)
    p.add_argument(
        "--saliency-method",
        dest="saliency_method",
        default=None,
        choices=["gradcam", "input_gradient"],
    )
    p.add_argument("--top-fraction", dest="top_fraction", type=fraction, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, default=None)
    p.add_argument(
        "--cache-dir",
        dest="cache_dir",
        default=None,
        help="saliency PNG cache and URL-signing key (default ~/.cache/robustar-ls)",
    )
    p.add_argument("--device", default=None)
    p.add_argument(
        "--data",
        default=None,
        help="dataset folder (train/<class>/...): enables Label Studio's 'Start Training' "
        "(sync the project's masks, paired training, new checkpoint over --checkpoint)",
    )
    p.add_argument("--project", default=None, help="Label Studio project title (for training)")
    p.add_argument("--masks", default=None, help="mask store for training (default <data>/masks)")
    add_prefetch_flag(p)
    p.add_argument("--debug", action="store_true", help="Flask's development server instead")


def add_maskrcnn_flags(p: argparse.ArgumentParser) -> None:
    """Mask R-CNN: its weights, downloads, on/off (README, "Mask R-CNN"). The older spellings
    ``--segmenter-weights`` and ``--no-segmenter`` still work, with a deprecation warning."""
    p.add_argument(
        "--maskrcnn-weights",
        dest="maskrcnn_weights",
        default=None,
        help="Mask R-CNN COCO weights (default: the torch hub cache, downloaded into it in the "
        "background on first use unless --offline)",
    )
    p.add_argument(
        "--segmenter-weights",
        dest="maskrcnn_weights",
        action=DeprecatedFlag,
        new="--maskrcnn-weights",
        default=None,
    )
    p.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never download the Mask R-CNN weights (also ROBUSTAR_LS_OFFLINE=1 or "
        "HF_HUB_OFFLINE=1; settings: maskrcnn.offline)",
    )
    p.add_argument(
        "--no-maskrcnn",
        dest="use_maskrcnn",
        action="store_false",
        default=None,
        help="no Mask R-CNN 'Spurious' pre-annotation",
    )
    p.add_argument(
        "--no-segmenter",
        dest="use_maskrcnn",
        action=DeprecatedFlag,
        new="--no-maskrcnn",
        nargs=0,
        const=False,
        default=None,
    )


def add_prefetch_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prefetch",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="store predictions of the N most influential tasks (and of up to N test errors) "
        "in Label Studio in the background, for each new model version (default 100; 0 = off)",
    )
    p.add_argument(
        "--no-influence-refresh",
        dest="influence",
        action="store_false",
        default=None,
        help="with --data, do not rerun influence for each new model version (default: rerun "
        "it, then prefetch by the new ranks; settings: prefetch.influence)",
    )
    p.add_argument(
        "--balance-classes",
        dest="balance_classes",
        action="store_true",
        default=None,
        help="rerun influence ranks in class turns, as `influence --balance-classes` "
        "(settings: influence.balance_classes)",
    )


def add_spurious_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spurious-segmenter",
        dest="spurious_segmenter",
        default=None,
        metavar="PATH",
        help="learned spurious segmenter for the 'Spurious' pre-annotation, reloaded when it "
        "changes (default <data>/.robustar/spurious_segmenter.pt when --data is set)",
    )


LIMIT_FLAGS = (  # (flag, type, help); defaults in ServeConfig
    ("--threads", positive_int, "threads per worker (default 4: /health answers meanwhile)"),
    ("--request-deadline", positive_float, "seconds per /predict; later images get an error"),
    ("--fetch-parallelism", positive_int, "images of one request fetched at once (default 4)"),
    ("--saliency-url-lifetime", positive_float, "seconds a heatmap URL lives (default a week)"),
    ("--max-image-pixels", positive_int, "pixels per image (default 40000000)"),
    ("--max-image-side", positive_int, "pixels per side of an image (default 12000)"),
    ("--max-aspect-ratio", positive_float, "long side / short side of an image (default 20)"),
    ("--working-side", positive_int, "larger images are decoded at reduced size (default 2048)"),
    ("--max-request-pixels", positive_int, "pixels of all images of one /predict (120000000)"),
    ("--max-tasks-per-request", positive_int, "tasks of one /predict; later ones get an error"),
    ("--max-response-bytes", positive_int, "size of a /predict answer (default 33554432)"),
)


def add_hardening_flags(p: argparse.ArgumentParser) -> None:
    """Image hosts, bounds on every request, how long signed URLs live (README, "The ML
    backend")."""
    p.add_argument(
        "--allow-image-host",
        dest="allowed_image_hosts",
        action="append",
        default=None,
        metavar="HOST",
        help="also fetch task images from HOST (host, host:port, *.domain or *; repeatable); "
        "Label Studio's origin and the document root are always allowed",
    )
    for flag, kind, text in LIMIT_FLAGS:
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), type=kind, default=None, help=text)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """Defaults < settings file [serve] < flags < secrets from the environment (and offline
    from the environment: it only ever forbids)."""
    offline = bool(getattr(args, "offline", None)) or offline_from_env()
    cfg = build(
        ServeConfig,
        settings_section(args, "serve"),
        pick(args, ServeConfig),
        {"maskrcnn": {"offline": True}} if offline else None,
    )
    secrets = secrets_from_env()
    return dataclasses.replace(
        cfg,
        label_studio_api_key=secrets["label_studio_api_key"],
        basic_auth_user=secrets["basic_auth_user"],
        basic_auth_pass=secrets["basic_auth_pass"],
        secret=secrets["secret"],
    )


def prefetch_config(args: argparse.Namespace):
    """Defaults < settings file [prefetch] < ``--prefetch N``."""
    flags = {"top": getattr(args, "prefetch", None), "influence": getattr(args, "influence", None)}
    return build(PrefetchConfig, settings_section(args, "prefetch"), flags)


def refresh_influence_config(args: argparse.Namespace, cfg: ServeConfig) -> InfluenceConfig:
    """The influence the backend reruns: defaults < settings [influence] < ``--balance-classes``
    (on the backend's ``--device``)."""
    from robustar_ls.cli.influence import influence_section

    flags = {"balance_classes": getattr(args, "balance_classes", None), "device": cfg.device}
    return build(InfluenceConfig, influence_section(args), flags)


def serve_training_jobs(args: argparse.Namespace, cfg: ServeConfig):
    """The "Start Training" job runner for ``serve --data``, or None without ``--data``.

    Shared by all gunicorn workers through ``<cache_dir>/training`` (one job at a time).
    """
    if not cfg.data:
        return None
    from functools import partial

    from robustar_ls.train.recipe import REBUILD_DEFAULTS, Recipe
    from robustar_ls.workflows.jobs import TrainingJobs
    from robustar_ls.workflows.segmenter_step import SegmenterStep
    from robustar_ls.workflows.sync_train import SyncTrainRequest, training_job

    # the backend's own settings name its Label Studio (the [serve] section and flags)
    label_studio = LabelStudioConfig(
        url=cfg.label_studio_url,
        api_key=cfg.label_studio_api_key,
        project=cfg.project,
        document_root=cfg.document_root,
    )
    open_request = partial(  # each job opens the dataset again: new images count
        SyncTrainRequest.open,
        cfg.data,
        cfg.checkpoint,
        cfg.masks or None,  # default <data>/masks
        label_studio=label_studio,
        paired=build(PairedConfig, settings_section(args, "paired")),
        recipe=Recipe(  # the default recipe; the [train] settings override both schedules
            finetune=build(TrainConfig, FINETUNE_DEFAULTS, settings_section(args, "train")),
            rebuild=build(TrainConfig, REBUILD_DEFAULTS, settings_section(args, "train")),
        ),
        sync=build(SyncConfig, settings_section(args, "sync")),
        segmenter=SegmenterStep(path=cfg.spurious_segmenter),  # the file this backend serves
    )
    return TrainingJobs(training_job(open_request), state_dir=cfg.resolved_cache_dir() / "training")


def run(args: argparse.Namespace) -> int:
    from robustar_ls.backend.last_good import servable_version
    from robustar_ls.backend.server import serve
    from robustar_ls.labelstudio.urls import resolve_secret

    cfg = serve_config(args)
    version = servable_version(cfg.checkpoint, cfg.last_good_dir())  # else its last-good copy
    log.info("serving %s (model version %s)", cfg.checkpoint, version)
    if cfg.document_root and not Path(cfg.document_root).is_dir():
        raise UserError(f"--document-root {cfg.document_root} is not a folder")
    # Resolve the URL-signing key once, here, so every worker shares it.
    cfg = dataclasses.replace(cfg, secret=resolve_secret(cfg.secret, cfg.resolved_cache_dir()))
    if cfg.data and not Path(cfg.data).is_dir():
        raise UserError(f"--data {cfg.data} is not a folder")

    prefetch = prefetch_config(args)
    influence = refresh_influence_config(args, cfg)

    def factory():
        from robustar_ls.backend.app import create_app
        from robustar_ls.backend.prefetch import build_prefetcher

        return create_app(
            cfg,
            jobs=serve_training_jobs(args, cfg),
            prefetcher=build_prefetcher(cfg, prefetch, influence),
        )

    serve(factory, cfg.host, cfg.port, cfg.workers, cfg.threads, cfg.timeout, debug=args.debug)
    return 0
