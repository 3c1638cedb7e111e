"""The ``robustar-ls`` command line: one sub-command per job.

Each sub-command has an ``add_*`` function that declares its flags and a ``run_*`` function that
takes the parsed arguments. Settings are resolved here, once: defaults < ``--config`` file <
flags; secrets come from the environment only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robustar_ls import __version__
from robustar_ls.config import (
    FINETUNE_DEFAULTS,
    ConfigError,
    InfluenceConfig,
    LabelStudioConfig,
    ModelConfig,
    PairedConfig,
    ServeConfig,
    SyncConfig,
    SyntheticConfig,
    TrainConfig,
    build,
    pick,
    read_settings_file,
    secrets_from_env,
)

log = logging.getLogger("robustar_ls")


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


def tqdm_progress(enabled: bool) -> Callable | None:
    """A tqdm wrapper for progress bars on stderr, or None when disabled."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    def progress(iterable, **kwargs):
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)

    return progress


def settings_section(args: argparse.Namespace, name: str) -> dict[str, Any]:
    if not getattr(args, "config", None):
        return {}
    section = read_settings_file(args.config).get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"section {name!r} of {args.config} must be a mapping")
    return section


def model_config(args: argparse.Namespace) -> ModelConfig:
    return build(ModelConfig, settings_section(args, "model"), pick(args, ModelConfig))


def train_config(args: argparse.Namespace, defaults: dict | None = None) -> TrainConfig:
    """Defaults (``TrainConfig``'s, then ``defaults``) < settings file [train] < flags."""
    return build(TrainConfig, defaults, settings_section(args, "train"), pick(args, TrainConfig))


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


# -- make-dataset ---------------------------------------------------------------------------


def add_make_dataset(sub) -> None:
    p = sub.add_parser("make-dataset", help="write a synthetic spurious-feature dataset")
    p.add_argument("out", help="output folder")
    p.add_argument("--kind", choices=["patch", "background"], default=None)
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 32)")
    p.add_argument("--per-class", dest="per_class", type=int, default=None)
    p.add_argument("--test-per-class", dest="test_per_class", type=int, default=None)
    p.add_argument("--val-per-class", dest="val_per_class", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--bias", type=float, default=None)
    p.add_argument("--spurious-fraction", dest="spurious_fraction", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=run_make_dataset)


def run_make_dataset(args: argparse.Namespace) -> int:
    from robustar_ls.data.synthetic import make_dataset

    cfg = build(SyntheticConfig, settings_section(args, "synthetic"), pick(args, SyntheticConfig))
    progress = tqdm_progress(not args.quiet)
    bar = (lambda it: progress(it, desc="images", unit="img")) if progress else None
    try:
        summary = make_dataset(args.out, cfg, progress=bar)
    except ValueError as err:
        raise UserError(str(err)) from err
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {summary['images']} images to {args.out}; train: {summary['train_status']}")
    return 0


# -- train / eval ---------------------------------------------------------------------------


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None, help="classifier architecture (default resnet18_small)")
    p.add_argument("--width", type=int, default=None, help="small-ResNet width (64 = full)")
    p.add_argument("--image-size", dest="image_size", type=int, default=None)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, …")
    p.add_argument("--num-workers", dest="num_workers", type=int, default=None)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a classifier (from scratch or from --init)")
    p.add_argument("--data", required=True, help="dataset folder with train/<class>/…")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--init", default=None, help="checkpoint to fine-tune from")
    add_model_flags(p)
    add_train_flags(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from robustar_ls.train.run import train_classifier

    summary = train_classifier(
        args.data,
        args.out,
        model_config(args),
        train_config(args),
        init=args.init,
        progress=tqdm_progress(not args.quiet),
    )
    if args.json:
        print_json(summary)
    else:
        accs = ", ".join(f"{s} {m['accuracy']:.3f}" for s, m in summary["splits"].items())
        print(f"saved {args.out} ({summary['model_version']}): accuracy {accs}")
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of a checkpoint on every split")
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--arch", default=None, help="architecture, for a bare state_dict")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from robustar_ls.data.folders import ImageFolderSplits
    from robustar_ls.models.checkpoint import load_checkpoint
    from robustar_ls.models.zoo import default_device
    from robustar_ls.train.run import evaluate_splits

    data = ImageFolderSplits.open(args.data, required=())
    ckpt = load_checkpoint(args.checkpoint, arch=args.arch, classes=data.classes)
    device = default_device(args.device)
    splits = evaluate_splits(ckpt.model.to(device), data, ckpt.image_size, device)
    if args.json:
        print_json({"model_version": ckpt.version, "splits": splits})
    else:
        for split, m in splits.items():
            print(f"{split:6s} accuracy {m['accuracy']:.4f}  (n={m['n']})")
    return 0


# -- sync-train -----------------------------------------------------------------------------


def add_sync_train(sub) -> None:
    p = sub.add_parser(
        "sync-train",
        help="sync masks from Label Studio, then paired fine-tuning of a checkpoint",
        description="With --label-studio-url, first pull the finished 'Spurious' brush "
        "annotations of project TITLE into DIR (default <data>/masks; API key from "
        "LABEL_STUDIO_API_KEY). Then fine-tune CKPT with paired training from the masks in DIR, "
        "evaluate before and after on every split and write the new checkpoint atomically "
        "(over CKPT unless --out). Under `torchrun --nproc-per-node N --no-python "
        "robustar-ls sync-train ...` it trains with DistributedDataParallel.",
    )
    p.add_argument("--data", required=True, help="dataset folder with train/<class>/...")
    p.add_argument("--checkpoint", required=True, help="checkpoint to fine-tune (the served one)")
    p.add_argument(
        "--masks",
        default=None,
        help="mask folder laid out as DIR/train/<class>/<stem>.png (default <data>/masks; "
        "e.g. <data>/oracle_masks for a synthetic dataset)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="where to write the new checkpoint (default: over --checkpoint, atomically)",
    )
    p.add_argument(
        "--fill",
        choices=FILL_MODE_CHOICES,
        default=None,
        help="what replaces the spurious pixels (default noise)",
    )
    p.add_argument(
        "--align-weight",
        dest="align_weight",
        type=float,
        default=None,
        help="λ of the logit-alignment term (default 0.1; 1 diverged in tests)",
    )
    p.add_argument(
        "--worst-of",
        dest="worst_of",
        type=int,
        default=None,
        help="K > 1: of K random fills per image train on the worst (default 1)",
    )
    p.add_argument(
        "--label-studio-url",
        dest="label_studio_url",
        default=None,
        help="sync finished 'Spurious' brush annotations from this Label Studio into the mask "
        "folder first (API key from LABEL_STUDIO_API_KEY)",
    )
    p.add_argument(
        "--project",
        default=None,
        help="title of the Label Studio project to sync (default robustar-ls)",
    )
    p.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="with --label-studio-url: report what the sync would change; write and train nothing",
    )
    add_train_flags(p)
    p.set_defaults(func=run_sync_train)


# The fill modes, listed here so that building the parser does not import torch.
FILL_MODE_CHOICES = ("noise", "weak_noise", "black", "colour", "stripes", "mixture")


def resolve_masks(args: argparse.Namespace) -> Path:
    """The mask folder training reads and a sync writes: ``--masks`` or ``<data>/masks``."""
    return Path(args.masks) if args.masks else Path(args.data) / "masks"


def label_studio_config(args: argparse.Namespace) -> LabelStudioConfig | None:
    """Label Studio settings for a sync, or None without ``--label-studio-url``."""
    if not args.label_studio_url:
        if args.dry_run or args.project:
            raise UserError("--dry-run and --project need --label-studio-url")
        return None
    api_key = secrets_from_env()["label_studio_api_key"]
    if not api_key:
        raise UserError(
            "set LABEL_STUDIO_API_KEY to a Label Studio access token (Account & Settings → "
            "Personal Access Token, or the legacy token) to sync from --label-studio-url"
        )
    flags = {"url": args.label_studio_url, "project": args.project, "api_key": api_key}
    return build(LabelStudioConfig, settings_section(args, "label_studio"), flags)


def run_sync_train(args: argparse.Namespace) -> int:
    from robustar_ls.data.masks import MaskError
    from robustar_ls.labelstudio.client import LabelStudioError
    from robustar_ls.labelstudio.sync import SyncError
    from robustar_ls.train.fills import FillError
    from robustar_ls.train.sync_train import NoMasksError, SyncRankError, sync_and_train

    paired_cfg = build(PairedConfig, settings_section(args, "paired"), pick(args, PairedConfig))
    sync_cfg = build(SyncConfig, settings_section(args, "sync"))
    label_studio = label_studio_config(args)
    try:
        summary = sync_and_train(
            args.data,
            args.checkpoint,
            label_studio=label_studio,
            paired=paired_cfg,
            train=train_config(args, FINETUNE_DEFAULTS),
            sync=sync_cfg,
            masks=resolve_masks(args),
            out=args.out,
            dry_run=args.dry_run,
            progress=tqdm_progress(not args.quiet),
        )
    except (
        MaskError,
        FillError,
        SyncError,
        NoMasksError,
        SyncRankError,
        LabelStudioError,
    ) as err:
        raise UserError(str(err)) from err
    if summary is None:  # a DDP worker other than rank 0: rank 0 reports
        return 0
    sync = summary["sync"]
    if not summary["trained"]:  # --dry-run
        if args.json:
            print_json(summary)
        else:
            print(f"Label Studio sync (dry run): {sync_summary(sync)}")
        return 0
    if args.json:
        print_json(
            {
                "model_version": summary["model_version"],
                "parent_version": summary["parent_version"],
                "before": summary["before"],
                "after": summary["after"],
                "annotated": summary["annotated"],
                "loss_terms": summary["loss_terms"],
                "out": summary["out"],
                "sync": sync,
            }
        )
    else:
        before = ", ".join(f"{s} {a:.3f}" for s, a in summary["before"].items())
        after = ", ".join(f"{s} {a:.3f}" for s, a in summary["after"].items())
        if sync is not None:
            print(f"Label Studio sync: {sync_summary(sync)}")
        print(
            f"saved {summary['out']} ({summary['model_version']}, parent "
            f"{summary['parent_version']}); {summary['annotated']} annotated images\n"
            f"  before: {before}\n  after:  {after}"
        )
    return 0


def sync_summary(sync: dict) -> str:
    """One line from a SyncReport dict, then its errors, one per line."""
    c = sync["counts"]
    changes = f"{c['added']} added, {c['updated']} updated, {c['removed']} removed"
    line = (
        f"{changes}{' (would be)' if sync['dry_run'] else ''}; {c['unchanged']} unchanged, "
        f"{c['skipped']} skipped, {c['errors']} errors"
    )
    return "\n".join([line, *(f"  error: {e['error']}" for e in sync["errors"])])


# -- simulate -------------------------------------------------------------------------------
# Glue only; the job is robustar_ls.workflows.simulate.simulate.


def add_simulate(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulated annotator: fine-tune from the reference masks of the first "
        "BUDGET x N training images in an order, and report the gap recovered",
        description="Order the training images (influence scores of CKPT, highest training loss, "
        "or a seeded shuffle), annotate the first BUDGET x N of them that have a reference mask "
        "in --masks, run sync-train's paired fine-tuning from those masks and report accuracy "
        "before/after and gap_recovered = (OOD_after - OOD_before) / (ID_before - OOD_before) "
        "(ID = val, or train without val; OOD = test). --budget 0 = plain fine-tuning (the "
        "control). CKPT is never modified; --out writes the fine-tuned model.",
    )
    p.add_argument("--data", required=True, help="dataset folder with train/, val/, test/")
    p.add_argument("--checkpoint", required=True, help="the model to fine-tune (not modified)")
    p.add_argument("--order", required=True, choices=["influence", "random", "loss"])
    p.add_argument(
        "--budget", required=True, type=float, help="fraction of training images to annotate"
    )
    p.add_argument("--masks", default=None, help="reference masks (default <data>/oracle_masks)")
    p.add_argument("--fill", choices=FILL_MODE_CHOICES, default=None, help="default noise")
    p.add_argument("--out", default=None, help="write the fine-tuned checkpoint here")
    add_train_flags(p)
    p.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from robustar_ls.data.masks import MaskError
    from robustar_ls.errors import RobustarError
    from robustar_ls.explain.influence import InfluenceError
    from robustar_ls.train.fills import FillError
    from robustar_ls.workflows.simulate import simulate

    train = train_config(args, FINETUNE_DEFAULTS)
    influence = build(InfluenceConfig, settings_section(args, "influence"), {"device": args.device})
    paired = build(PairedConfig, settings_section(args, "paired"), pick(args, PairedConfig))
    try:
        summary = simulate(
            args.data,
            args.checkpoint,
            order=args.order,
            budget=args.budget,
            masks=args.masks,
            seed=train.seed,
            paired=paired,
            train=train,
            influence=influence,
            out=args.out,
            progress=tqdm_progress(not args.quiet),
        )
    except (RobustarError, MaskError, FillError, InfluenceError) as err:
        raise UserError(str(err)) from err
    if args.json:
        print_json(summary)
        return 0
    gap = summary["gap_recovered"]
    print(
        f"{summary['order']} order, budget {summary['budget']:g}: {summary['annotated']} of "
        f"{summary['picked']} picked images annotated ({summary['spurious_annotated']} spurious)"
        f"\n  before: {_accs(summary['before'])}\n  after:  {_accs(summary['after'])}"
        f"\n  gap recovered: {'n/a (no gap)' if gap is None else f'{gap:.3f}'}"
    )
    return 0


def _accs(accs: dict[str, float]) -> str:
    return ", ".join(f"{split} {acc:.3f}" for split, acc in accs.items())


# -- influence ------------------------------------------------------------------------------


def add_influence(sub) -> None:
    p = sub.add_parser(
        "influence",
        help="rank training images by how much they drive the model's test errors",
        description="Score every training image by how much it drives the model's errors on "
        "the test split (TRAK-style projected gradients; train features cached per model "
        "version under <data>/.robustar/influence). Without --out, --json prints "
        '{"model_version", "scores": {relpath: score}, ...}. With --label-studio-url and '
        "--project (API key from LABEL_STUDIO_API_KEY) the scores are written into the tasks.",
    )
    p.add_argument("--data", required=True, help="dataset folder with train/ and test/")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--arch", default=None, help="architecture, for a bare state_dict")
    p.add_argument("--out", default=None, help="write the full scores JSON here")
    p.add_argument("--top", type=int, default=None, help="explain / write only the N highest")
    p.add_argument("--k", type=int, default=None, help="projection size (default 2048)")
    p.add_argument("--layers", default=None, help="comma-separated module names")
    p.add_argument("--projection", choices=["sketch", "gaussian"], default=None)
    p.add_argument("--damping", type=float, default=None)
    p.add_argument("--aggregate", choices=["normalized", "sum"], default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, …")
    p.add_argument("--test-split", dest="test_split", default=None, help="default: test")
    p.add_argument("--cache-dir", default=None, help="default: <data>/.robustar/influence")
    p.add_argument("--label-studio-url", dest="url", default=None, help="Label Studio URL")
    p.add_argument("--project", default=None, help="Label Studio project title to update")
    p.set_defaults(func=run_influence)


def influence_config(args: argparse.Namespace) -> InfluenceConfig:
    flags = pick(args, InfluenceConfig)
    if getattr(args, "layers", None):
        flags["layers"] = tuple(name.strip() for name in args.layers.split(",") if name.strip())
    section = dict(settings_section(args, "influence"))
    if isinstance(section.get("layers"), list):
        section["layers"] = tuple(section["layers"])
    cfg = build(InfluenceConfig, section, flags)
    if cfg.k < 1 or cfg.batch_size < 1 or cfg.damping < 0:
        raise ConfigError("influence: k and batch size must be positive, damping >= 0")
    return cfg


def run_influence(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustar_ls.data.folders import ImageFolderSplits
    from robustar_ls.explain.feature_cache import FeatureCacheError
    from robustar_ls.explain.influence import InfluenceError, InfluenceScorer
    from robustar_ls.explain.projection import ProjectionError
    from robustar_ls.models.checkpoint import atomic_write_bytes, load_checkpoint

    cfg = influence_config(args)
    if args.top is not None and args.top < 1:
        raise UserError("--top must be at least 1")
    if args.url and not args.project:
        raise UserError("--label-studio-url needs --project (the project title)")
    data = ImageFolderSplits.open(args.data, required=("train", cfg.test_split))
    ckpt = load_checkpoint(args.checkpoint, arch=args.arch, classes=data.classes)
    cache = Path(args.cache_dir) if args.cache_dir else data.root / ".robustar" / "influence"
    progress = tqdm_progress(not args.quiet)
    try:
        scorer = InfluenceScorer(ckpt.model, None, cfg)
        result = scorer.score(
            data.splits["train"],
            data.splits[cfg.test_split],
            image_size=ckpt.image_size,
            model_version=ckpt.version,
            classes=data.classes,
            cache_root=cache,
            top=args.top,
            progress=progress,
        )
    except (InfluenceError, ProjectionError, FeatureCacheError) as err:
        raise UserError(str(err)) from err
    top = result.ranked(args.top if args.top is not None else 10)
    highlights = [
        {
            "relpath": rel,
            "score": result.scores[rel],
            "rank": result.ranks[rel],
            "drives": result.drives.get(rel, 0),
            "explains": result.explain_text(rel),
        }
        for rel in top
    ]
    summary: dict[str, Any] = {
        "model_version": result.model_version,
        "train_images": len(result.scores),
        "test_error_count": len(result.test_errors),
        "top": highlights,
    }
    if args.project:
        summary["label_studio"] = write_influence_to_label_studio(args, result, progress)
    document = {
        "model_version": result.model_version,
        "scores": result.scores,
        "ranks": result.ranks,
        "explains": result.explains,
        "test_errors": result.test_errors,
    }
    if args.out:
        text = json.dumps(document, indent=1, sort_keys=True) + "\n"
        atomic_write_bytes(Path(args.out), text.encode())
        summary["out"] = str(args.out)
    if args.json:
        shown = {key: value for key, value in document.items() if key != "ranks"}
        print_json(summary if args.out else {**shown, **summary})
    elif args.out:
        print(f"wrote scores of {len(result.scores)} training images to {args.out}")
    else:
        print(f"{len(result.test_errors)} test errors; most responsible training images:")
        for item in highlights:
            print(f"{item['rank']:5d}  {item['score']:+.4g}  {item['relpath']}  {item['explains']}")
    return 0


def write_influence_to_label_studio(args: argparse.Namespace, result, progress) -> dict:
    """Write the scores into the project's tasks; returns what was done."""
    from robustar_ls.config import LabelStudioConfig, secrets_from_env

    try:
        from robustar_ls.labelstudio import client as ls
        from robustar_ls.labelstudio.influence_fields import write_influence
    except ImportError as err:
        raise UserError(
            f"writing to Label Studio needs robustar_ls.labelstudio.client ({err}); "
            "update robustar-ls, or run without --label-studio-url and use --out"
        ) from err
    ls_cfg = build(
        LabelStudioConfig,
        settings_section(args, "label_studio"),
        pick(args, LabelStudioConfig),
        {"api_key": secrets_from_env()["label_studio_api_key"]},
    )
    if not ls_cfg.api_key:
        raise UserError("set LABEL_STUDIO_API_KEY (a legacy token or a personal access token)")
    try:
        client = ls.connect(ls_cfg.url, ls_cfg.api_key)
        project = ls.find_project(client, ls_cfg.project)
        if project is None:
            raise UserError(
                f"no Label Studio project titled {ls_cfg.project!r} at {ls_cfg.url}; "
                "create it with `robustar-ls import`"
            )
        report = write_influence(client, project.id, result, args.top, progress)
    except ls.LabelStudioError as err:
        raise UserError(str(err)) from err
    log.info(
        "Label Studio project %s: %d tasks scored, %d old scores cleared, %d updated",
        project.id,
        report.scored,
        report.cleared,
        report.updated,
    )
    return {"project_id": project.id, **report.as_dict()}


# -- import -------------------------------------------------------------------------------


def add_import(sub) -> None:
    p = sub.add_parser(
        "import",
        help="create or update the Label Studio project for a dataset",
        description="One task per training image, served from Label Studio's local files, the "
        "ML backend connected and a Data Manager view ordered by influence. Running it again "
        "adds only new images. The API key comes from LABEL_STUDIO_API_KEY (or "
        "LABEL_STUDIO_USER_TOKEN), backend basic auth from BASIC_AUTH_USER/BASIC_AUTH_PASS.",
    )
    p.add_argument("--data", required=True, help="dataset folder with train/<class>/<image>")
    p.add_argument("--label-studio-url", dest="url", default=None, help="Label Studio URL")
    p.add_argument("--project", default=None, help="project title (found or created)")
    p.add_argument("--backend-url", dest="backend_url", default=None, help="ML backend URL")
    p.add_argument(
        "--document-root",
        dest="document_root",
        default=None,
        help="the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, which must contain --data "
        "(default: that variable, when set in this environment)",
    )
    p.add_argument("--label-config", dest="label_config", default=None, help="labeling XML")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument(
        "--saliency-base-url",
        dest="saliency_base_url",
        default=None,
        help="backend URL as the browser reaches it, for heatmap links (default --backend-url)",
    )
    p.add_argument(
        "--cache-dir",
        dest="cache_dir",
        default=None,
        help="the backend's --cache-dir (its URL-signing key); or set ROBUSTAR_LS_SECRET",
    )
    p.set_defaults(func=run_import)


def saliency_links(cfg, secret: str) -> Callable[[str], str] | None:
    """Signed heatmap URLs for task data, when a backend is connected (same key as serve)."""
    from robustar_ls.config import default_cache_dir
    from robustar_ls.labelstudio.urls import resolve_secret, saliency_url

    base = cfg.saliency_base_url or cfg.backend_url
    if not base:
        return None
    key = resolve_secret(secret, cfg.cache_dir or default_cache_dir())
    return lambda image_ref: saliency_url(base, image_ref, key)


def run_import(args: argparse.Namespace) -> int:
    from robustar_ls.config import ImportConfig, LabelStudioConfig, secrets_from_env
    from robustar_ls.labelstudio.client import LabelStudioError, connect
    from robustar_ls.labelstudio.project_import import import_project, summary_line

    secrets = secrets_from_env()
    ls_cfg = build(
        LabelStudioConfig,
        # a Label Studio started from this shell: its document root is the default
        {"document_root": os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or None},
        settings_section(args, "label_studio"),
        pick(args, LabelStudioConfig),
        {"api_key": secrets["label_studio_api_key"]},
    )
    cfg = build(ImportConfig, settings_section(args, "import"), pick(args, ImportConfig))
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    basic_auth = None
    if secrets["basic_auth_user"]:
        basic_auth = (secrets["basic_auth_user"], secrets["basic_auth_pass"])
    try:
        client = connect(ls_cfg.url, ls_cfg.api_key)
        summary = import_project(
            client,
            ls_cfg,
            cfg,
            basic_auth=basic_auth,
            saliency=saliency_links(cfg, secrets["secret"]),
            progress=tqdm_progress(not args.quiet),
        )
    except LabelStudioError as err:
        raise UserError(str(err)) from err
    if args.json:
        print_json(summary)
    else:
        print(summary_line(summary))
    return 0


# -- serve ----------------------------------------------------------------------------------


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the Label Studio ML backend (gunicorn)")
    p.add_argument("--checkpoint", required=True, help="classifier checkpoint to serve")
    p.add_argument(
        "--document-root",
        dest="document_root",
        default=None,
        help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT: /data/local-files/ images are read here",
    )
    p.add_argument("--label-studio-url", dest="label_studio_url", default=None)
    p.add_argument("--host", default=None, help="default 0.0.0.0")
    p.add_argument("--port", type=int, default=None, help="default 9090")
    p.add_argument("--workers", type=int, default=None, help="gunicorn worker processes")
    p.add_argument(
        "--segmenter-weights",
        dest="segmenter_weights",
        default=None,
        help="Mask R-CNN COCO weights (default: the torch hub cache)",
    )
    p.add_argument(
        "--no-segmenter",
        dest="segmenter",
        action="store_false",
        default=None,
        help="no Mask R-CNN 'Spurious' pre-annotation",
    )
    p.add_argument("--score-threshold", dest="score_threshold", type=float, default=None)
    p.add_argument(
        "--saliency-method",
        dest="saliency_method",
        default=None,
        choices=["gradcam", "input_gradient"],
    )
    p.add_argument("--top-fraction", dest="top_fraction", type=float, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
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
    p.add_argument("--debug", action="store_true", help="Flask's development server instead")
    p.set_defaults(func=run_serve)


def serve_training_jobs(args: argparse.Namespace, cfg: ServeConfig):
    """The "Start Training" job runner for ``serve --data``, or None without ``--data``.

    Shared by all gunicorn workers through ``<cache_dir>/training`` (one job at a time).
    """
    if not cfg.data:
        return None
    from robustar_ls.train.jobs import TrainingJobs
    from robustar_ls.train.sync_train import training_job

    label_studio = LabelStudioConfig(
        url=cfg.label_studio_url,
        api_key=cfg.label_studio_api_key,
        project=cfg.project,
        document_root=cfg.document_root,
    )
    run = training_job(
        cfg.data,
        cfg.checkpoint,
        label_studio=label_studio,
        paired=build(PairedConfig, settings_section(args, "paired")),
        train=build(TrainConfig, FINETUNE_DEFAULTS, settings_section(args, "train")),
        sync=build(SyncConfig, settings_section(args, "sync")),
        masks=cfg.masks or None,
    )
    return TrainingJobs(run, state_dir=cfg.resolved_cache_dir() / "training")


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """Defaults < settings file [serve] < flags < secrets from the environment."""
    import dataclasses

    from robustar_ls.config import secrets_from_env

    cfg = build(ServeConfig, settings_section(args, "serve"), pick(args, ServeConfig))
    secrets = secrets_from_env()
    return dataclasses.replace(
        cfg,
        label_studio_api_key=secrets["label_studio_api_key"],
        basic_auth_user=secrets["basic_auth_user"],
        basic_auth_pass=secrets["basic_auth_pass"],
        secret=secrets["secret"],
    )


def run_serve(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from robustar_ls.backend.server import serve
    from robustar_ls.labelstudio.urls import resolve_secret
    from robustar_ls.models.checkpoint import read_version

    cfg = serve_config(args)
    log.info("serving %s (model version %s)", cfg.checkpoint, read_version(cfg.checkpoint))
    if cfg.document_root and not Path(cfg.document_root).is_dir():
        raise UserError(f"--document-root {cfg.document_root} is not a folder")
    # Resolve the URL-signing key once, here, so every worker shares it.
    cfg = dataclasses.replace(cfg, secret=resolve_secret(cfg.secret, cfg.resolved_cache_dir()))

    if cfg.data and not Path(cfg.data).is_dir():
        raise UserError(f"--data {cfg.data} is not a folder")

    def factory():
        from robustar_ls.backend.app import create_app

        return create_app(cfg, jobs=serve_training_jobs(args, cfg))

    serve(factory, cfg.host, cfg.port, cfg.workers, cfg.threads, cfg.timeout, debug=args.debug)
    return 0


# -- demo -----------------------------------------------------------------------------------


def add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole loop on a built-in dataset: Label Studio + backend + ranked project",
    )
    p.add_argument("--workdir", default=None, help="work folder (default ./demo)")
    p.add_argument(
        "--label-studio-bin",
        dest="label_studio_bin",
        default=None,
        help="the label-studio executable (default .venv-ls/bin/label-studio)",
    )
    p.add_argument("--label-studio-port", dest="label_studio_port", type=int, default=None)
    p.add_argument("--backend-port", dest="backend_port", type=int, default=None)
    p.add_argument("--per-class", dest="per_class", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        default=None,
        help="stop the servers once everything is set up (for scripts and tests)",
    )
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustar_ls.demo import DemoConfig, DemoError
    from robustar_ls.demo import run_demo as demo
    from robustar_ls.labelstudio.server import LabelStudioStartError

    overrides = pick(args, DemoConfig)
    if not overrides["label_studio_bin"]:
        overrides["label_studio_bin"] = str(Path(".venv-ls/bin/label-studio").resolve())
    cfg = build(DemoConfig, settings_section(args, "demo"), overrides)
    try:
        summary = demo(cfg, main)
    except (DemoError, LabelStudioStartError) as err:
        raise UserError(str(err)) from err
    if args.json:
        print_json(summary)
    return 0


# -- entry point ----------------------------------------------------------------------------

COMMANDS = [
    add_make_dataset,
    add_train,
    add_eval,
    add_sync_train,
    add_import,
    add_serve,
    add_influence,
    add_simulate,
    add_demo,
]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustar-ls",
        description="Remove spurious features from image-classification training data, "
        "inside Label Studio.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None, help="settings file (YAML or TOML)")
    common.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    original = sub.add_parser

    def add_parser(name, **kwargs):
        kwargs.setdefault("parents", [common])
        return original(name, **kwargs)

    sub.add_parser = add_parser
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # one INFO line per HTTP request to Label Studio otherwise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    from robustar_ls.data.folders import DatasetError
    from robustar_ls.data.images import ImageLoadError
    from robustar_ls.models.checkpoint import CheckpointError
    from robustar_ls.models.zoo import UnknownArchError

    try:
        return args.func(args)
    except (
        UserError,
        ConfigError,
        DatasetError,
        CheckpointError,
        ImageLoadError,
        UnknownArchError,
    ) as err:
        print(f"robustar-ls {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robustar-ls {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
