"""``robustar-ls influence``: rank training images by how much they drive the test errors."""

from __future__ import annotations

import argparse

from robustar_ls.cli.options import (
    UserError,
    add_label_studio_url,
    label_studio_config,
    print_json,
    settings_section,
    tqdm_progress,
)
from robustar_ls.cli.validators import non_negative_int, positive_float, positive_int
from robustar_ls.config import ConfigError, InfluenceConfig, build, pick

NAME = "influence"
HELP = "rank training images by how much they drive the model's test errors"
DESCRIPTION = (
    "Score every training image by how much it drives the model's errors on the test split "
    "(TRAK-style projected gradients; train features cached per model version under "
    '<data>/.robustar/influence). Without --out, --json prints {"model_version", "scores": '
    "{relpath: score}, ...}. With --label-studio-url and --project (API key from "
    "LABEL_STUDIO_API_KEY) the scores are written into the tasks. Under torchrun "
    "(torchrun --nproc-per-node N --no-python robustar-ls influence ...) every process "
    "featurizes a share of the training images and rank 0 scores and writes; a killed run "
    "resumes from the shards already written."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder with train/ and test/")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--arch", default=None, help="architecture, for a bare state_dict")
    p.add_argument("--out", default=None, help="write the full scores JSON here")
    p.add_argument(
        "--top", type=positive_int, default=None, help="explain / write only the N highest"
    )
    p.add_argument("--k", type=positive_int, default=None, help="projection size (default 2048)")
    p.add_argument("--layers", default=None, help="comma-separated module names")
    p.add_argument("--projection", choices=["sketch", "gaussian"], default=None)
    p.add_argument("--damping", type=positive_float, default=None)
    p.add_argument("--aggregate", choices=["normalized", "sum"], default=None)
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, …")
    p.add_argument("--test-split", dest="test_split", default=None, help="default: test")
    p.add_argument("--cache-dir", default=None, help="default: <data>/.robustar/influence")
    add_label_studio_url(p)
    p.add_argument("--project", default=None, help="Label Studio project title to update")
    p.add_argument(
        "--prefetch",
        type=non_negative_int,
        default=100,
        metavar="N",
        help="then ask the project's ML backend to store predictions of the N most influential "
        "tasks (default 100; 0 = do not ask)",
    )
    p.add_argument(
        "--balance-classes",
        dest="balance_classes",
        action="store_true",
        default=None,  # the [influence] settings' balance_classes, else off
        help="rank in class turns: the top image of every class, then the second, ... (Label "
        "Studio's influence_rank too); for a shortcut that every class carries",
    )
    p.add_argument(
        "--backend-url",
        dest="backend_url",
        default=None,
        help="the ML backend to ask (default: the one the project is connected to)",
    )


def influence_config(args: argparse.Namespace) -> InfluenceConfig:
    flags = pick(args, InfluenceConfig)
    if getattr(args, "layers", None):
        flags["layers"] = tuple(name.strip() for name in args.layers.split(",") if name.strip())
    cfg = build(InfluenceConfig, influence_section(args), flags)
    if cfg.k < 1 or cfg.batch_size < 1 or cfg.damping < 0:
        raise ConfigError("influence: k and batch size must be positive, damping >= 0")
    return cfg


def influence_section(args: argparse.Namespace) -> dict:
    """The settings file's [influence] section (``layers`` as a tuple)."""
    section = dict(settings_section(args, "influence"))
    if isinstance(section.get("layers"), list):
        section["layers"] = tuple(section["layers"])
    return section


def run(args: argparse.Namespace) -> int:
    from robustar_ls.data.folders import ImageFolderSplits
    from robustar_ls.models.checkpoint import load_checkpoint
    from robustar_ls.train.torchrun import process_group
    from robustar_ls.workflows import influence

    cfg = influence_config(args)
    if args.top is not None and args.top < 1:
        raise UserError("--top must be at least 1")
    if args.label_studio_url and not args.project:
        raise UserError("--label-studio-url needs --project (the project title)")
    label_studio = label_studio_config(args) if args.project else None
    data = ImageFolderSplits.open(args.data, required=("train", cfg.test_split))
    ckpt = load_checkpoint(args.checkpoint, arch=args.arch, classes=data.classes)
    with process_group(cfg.device) as ranks:  # torchrun: every rank featurizes
        main = ranks is None or ranks.is_main
        progress = tqdm_progress(not args.quiet and main)
        result = influence.score(
            data, ckpt, cfg, cache_root=args.cache_dir, top=args.top, progress=progress, ranks=ranks
        )
    if result is None:  # not rank 0: rank 0 writes the scores
        return 0
    if cfg.balance_classes:
        result = influence.take_class_turns(result)
    summary = influence.summary(result, args.top)
    if label_studio is not None:
        from robustar_ls.labelstudio.client import connect

        client = connect(label_studio.url, label_studio.api_key)
        summary["label_studio"] = influence.write_to_label_studio(
            client, label_studio, result, args.top, progress, test_split=cfg.test_split
        )
        if args.prefetch:
            summary["prefetch"] = _request_prefetch(args, client, summary["label_studio"])
    if args.out:
        influence.write_document(result, args.out)
        summary["out"] = str(args.out)
    _report(args, result, summary, len(data.classes))
    return 0


def _request_prefetch(args: argparse.Namespace, client, written: dict) -> dict:
    from robustar_ls.cli.options import backend_basic_auth
    from robustar_ls.workflows.prefetch_request import request_prefetch

    auth = backend_basic_auth()
    return request_prefetch(client, written["project_id"], args.prefetch, args.backend_url, auth)


def _report(args: argparse.Namespace, result, summary: dict, n_classes: int) -> None:
    if args.json:
        from robustar_ls.workflows.influence import document

        shown = {key: value for key, value in document(result).items() if key != "ranks"}
        print_json(summary if args.out else {**shown, **summary})
    elif args.out:
        print(f"wrote scores of {len(result.scores)} training images to {args.out}")
    else:
        print(f"{len(result.test_errors)} test errors; most responsible training images:")
        for item in summary["top"]:
            print(f"{item['rank']:5d}  {item['score']:+.4g}  {item['relpath']}  {item['explains']}")
        _print_class_mix(summary["top_classes"], n_classes)
    written = summary.get("label_studio")
    if written and not args.json:
        print(
            f"Label Studio project {written['project_id']}: {written['scored']} training tasks "
            f"scored, {written['predicted']} test predictions ({written['test_errors']} errors "
            f"with their top training tasks), {written['updated']} tasks updated"
        )
    if summary.get("prefetch") and not args.json:
        print(f"prefetch: {summary['prefetch']['message']}")


def _print_class_mix(mix: dict[str, int], n_classes: int) -> None:
    from robustar_ls.workflows.influence import one_class_on_top

    print(
        f"classes of the {sum(mix.values())} most influential: "
        + ", ".join(f"{name} {count}" for name, count in mix.items())
    )
    name = one_class_on_top(mix, n_classes)
    if name is not None:
        print(
            f"most of them are {name}: masks of one class remove a shortcut for that class "
            "only. If the other classes show it too, rank them in class turns: rerun with "
            "--balance-classes (simulate --balance-classes measures the difference)."
        )
