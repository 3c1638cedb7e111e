"""``robustar-ls demo``: the whole loop on a built-in dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from robustar_ls.cli.options import backend_basic_auth, print_json, settings_section, tqdm_progress
from robustar_ls.cli.validators import port_number, positive_int
from robustar_ls.config import DemoConfig, build, pick, secrets_from_env

NAME = "demo"
HELP = "the whole loop on a built-in dataset: Label Studio + backend + ranked project"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=None, help="work folder (default ./demo)")
    p.add_argument(
        "--label-studio-bin",
        dest="label_studio_bin",
        default=None,
        help="the label-studio executable (default .venv-ls/bin/label-studio)",
    )
    p.add_argument("--label-studio-port", dest="label_studio_port", type=port_number, default=None)
    p.add_argument("--backend-port", dest="backend_port", type=port_number, default=None)
    p.add_argument("--per-class", dest="per_class", type=positive_int, default=None)
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        default=None,
        help="stop the servers once everything is set up (for scripts and tests)",
    )


def run(args: argparse.Namespace) -> int:
    from robustar_ls.workflows.demo import run_demo

    overrides = pick(args, DemoConfig)
    if not overrides["label_studio_bin"]:
        overrides["label_studio_bin"] = str(Path(".venv-ls/bin/label-studio").resolve())
    cfg = build(DemoConfig, settings_section(args, "demo"), overrides)
    secrets = secrets_from_env()
    summary = run_demo(
        cfg,
        secret=secrets["secret"],
        basic_auth=backend_basic_auth(),
        progress=tqdm_progress(not args.quiet),
    )
    if args.json:
        print_json(summary)
    return 0
