"""``robustar-ls import``: create or update the Label Studio project for a dataset."""

from __future__ import annotations

import argparse
import os

from robustar_ls.cli.options import (
    UserError,
    add_label_studio_url,
    backend_basic_auth,
    label_studio_config,
    print_json,
    settings_section,
    tqdm_progress,
)
from robustar_ls.cli.validators import positive_int
from robustar_ls.config import ImportConfig, build, pick, secrets_from_env

NAME = "import"
HELP = "create or update the Label Studio project for a dataset"
DESCRIPTION = (
    "One task per training image, served from Label Studio's local files, the ML backend "
    "connected and a Data Manager view ordered by influence. Running it again adds only new "
    "images. The API key comes from LABEL_STUDIO_API_KEY (or LABEL_STUDIO_USER_TOKEN), backend "
    "basic auth from BASIC_AUTH_USER/BASIC_AUTH_PASS."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder with train/<class>/<image>")
    add_label_studio_url(p)
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
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, default=None)
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


def run(args: argparse.Namespace) -> int:
    from robustar_ls.labelstudio.client import connect
    from robustar_ls.labelstudio.project_import import import_project, summary_line
    from robustar_ls.workflows.project import saliency_links

    # a Label Studio started from this shell: its document root is the default
    env_root = os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or None
    ls_cfg = label_studio_config(args, defaults={"document_root": env_root})
    cfg = build(ImportConfig, settings_section(args, "import"), pick(args, ImportConfig))
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    summary = import_project(
        connect(ls_cfg.url, ls_cfg.api_key),
        ls_cfg,
        cfg,
        basic_auth=backend_basic_auth(),
        saliency=saliency_links(
            cfg.saliency_base_url or cfg.backend_url,
            secrets_from_env()["secret"],
            cfg.cache_dir or None,
            cfg.saliency_url_lifetime,
        ),
        progress=tqdm_progress(not args.quiet),
    )
    if args.json:
        print_json(summary)
    else:
        print(summary_line(summary))
    return 0
