"""What several commands share: the common flags, settings resolution, Label Studio settings
(one way, one API-key message), progress bars and JSON output.

Settings are resolved here, once: defaults < ``--config`` file section < flags; secrets come
from the environment only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from robustar_ls.cli.validators import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from robustar_ls.config import (
    ConfigError,
    LabelStudioConfig,
    ModelConfig,
    TrainConfig,
    build,
    pick,
    read_settings_file,
    secrets_from_env,
)
from robustar_ls.errors import RobustarError
from robustar_ls.models.weights_download import offline_from_env

API_KEY_MESSAGE = (
    "set LABEL_STUDIO_API_KEY (or LABEL_STUDIO_USER_TOKEN) to a Label Studio access token "
    "(Account & Settings → Personal Access Token, or the legacy token)"
)


class UserError(RobustarError):
    """Bad command-line input the user can fix; printed as one line, no traceback."""


def common_parser() -> argparse.ArgumentParser:
    """The flags every command takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None, help="settings file (YAML or TOML)")
    common.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return common


def settings_section(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Section ``name`` of the ``--config`` file ({} without one)."""
    if not getattr(args, "config", None):
        return {}
    section = read_settings_file(args.config).get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"section {name!r} of {args.config} must be a mapping")
    return section


def model_config(args: argparse.Namespace) -> ModelConfig:
    """Defaults < settings file [model] < flags; offline also from the environment (which
    only ever forbids downloads, as for ``serve``)."""
    offline = {"offline": True} if offline_from_env() else None
    return build(ModelConfig, settings_section(args, "model"), pick(args, ModelConfig), offline)


def train_config(args: argparse.Namespace, defaults: dict | None = None) -> TrainConfig:
    """Defaults (``TrainConfig``'s, then ``defaults``) < settings file [train] < flags."""
    return build(TrainConfig, defaults, settings_section(args, "train"), pick(args, TrainConfig))


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None, help="classifier architecture (default resnet18_small)")
    p.add_argument(
        "--width", type=positive_int, default=None, help="small-ResNet width (64 = full)"
    )
    p.add_argument(
        "--image-size",
        dest="image_size",
        type=positive_int,
        default=None,
        help="input side in px (default 32; with --pretrained the weights' crop size, 224)",
    )
    p.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start from torchvision's ImageNet weights (torchvision architectures; downloaded "
        "once into the torch hub cache, $TORCH_HOME/hub/checkpoints; settings: model.pretrained)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never download the --pretrained weights (also ROBUSTAR_LS_OFFLINE=1 or "
        "HF_HUB_OFFLINE=1; settings: model.offline)",
    )


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--weight-decay", dest="weight_decay", type=non_negative_float, default=None)
    p.add_argument("--seed", type=non_negative_int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, …")
    p.add_argument("--num-workers", dest="num_workers", type=non_negative_int, default=None)


def add_label_studio_url(p: argparse.ArgumentParser, help: str = "Label Studio URL") -> None:
    """``--label-studio-url``, always into ``args.label_studio_url``."""
    p.add_argument("--label-studio-url", dest="label_studio_url", default=None, help=help)


def label_studio_config(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None
) -> LabelStudioConfig:
    """Label Studio settings: ``defaults`` < settings file [label_studio] < the ``--label-studio
    -url``, ``--project`` and ``--document-root`` flags the command has; the API key from the
    environment (:data:`API_KEY_MESSAGE` when it is not set)."""
    api_key = secrets_from_env()["label_studio_api_key"]
    if not api_key:
        raise UserError(API_KEY_MESSAGE)
    flags = {
        "url": getattr(args, "label_studio_url", None),
        "project": getattr(args, "project", None),
        "document_root": getattr(args, "document_root", None),
    }
    return build(
        LabelStudioConfig,
        defaults,
        settings_section(args, "label_studio"),
        flags,
        {"api_key": api_key},
    )


def backend_basic_auth() -> tuple[str, str] | None:
    """The ML backend's basic-auth login from BASIC_AUTH_USER/BASIC_AUTH_PASS, or None."""
    secrets = secrets_from_env()
    if not secrets["basic_auth_user"]:
        return None
    return secrets["basic_auth_user"], secrets["basic_auth_pass"]


def on_terminal() -> bool:
    """Whether stderr is a terminal: progress bars redraw with carriage returns, which a log
    file keeps as thousands of lines; there the log's one line per epoch is the progress."""
    return sys.stderr.isatty()


def tqdm_progress(enabled: bool) -> Callable | None:
    """A tqdm wrapper for progress bars on stderr, or None when disabled or when stderr is
    not a terminal (:func:`on_terminal`)."""
    if not enabled or not on_terminal():
        return None
    from tqdm.auto import tqdm

    def progress(iterable, **kwargs):
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)

    return progress


class JobBar:
    """An ``on_progress`` callback (``train/progress.py`` records) drawing one tqdm bar on
    stderr, from the first record on: the fraction of training done, the phase, epoch, last
    loss and the ETA."""

    SCALE = 1000

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.SCALE,
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
            )
        self.bar.set_description_str(record["phase"], refresh=False)
        self.bar.n = round(float(record.get("fraction") or 0.0) * self.SCALE)
        from robustar_ls.train.progress import progress_text

        self.bar.set_postfix_str(progress_text(record), refresh=False)
        self.bar.refresh()
        if record["phase"] == "write":
            self.bar.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


class DeprecatedFlag(argparse.Action):
    """An old spelling of a flag (hidden from ``--help``): it does what ``new`` does and says
    so in one line on stderr. ``nargs=0`` with ``const`` for an on/off flag."""

    def __init__(self, option_strings, dest, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
