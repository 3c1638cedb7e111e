"""The ``robustar-ls`` entry point: builds the parser from the command modules and turns any
:class:`~robustar_ls.errors.RobustarError` into one line on stderr and its exit code.

A command is one module with ``NAME``, ``HELP``, optionally ``DESCRIPTION`` and
``DEPRECATED_NAMES`` (older names still accepted, with a warning), ``add_arguments(parser)``
and ``run(args) -> int``; adding one is that module plus one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from robustar_ls import __version__
from robustar_ls.cli import (
    demo,
    evaluate,
    history,
    import_project,
    influence,
    learned_segmenter,
    make_dataset,
    serve,
    simulate,
    sync_train,
    train,
)
from robustar_ls.cli.options import common_parser
from robustar_ls.errors import RobustarError

COMMANDS: tuple[ModuleType, ...] = (
    make_dataset,
    train,
    evaluate,
    sync_train,
    simulate,
    import_project,
    serve,
    influence,
    learned_segmenter,
    history,
    demo,
)
# an older command name -> its name now
DEPRECATED_COMMANDS: dict[str, str] = {
    old: c.NAME for c in COMMANDS for old in getattr(c, "DEPRECATED_NAMES", ())
}


def _add_command(sub, command: ModuleType, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        command.NAME,
        aliases=list(getattr(command, "DEPRECATED_NAMES", ())),
        parents=[common],
        help=command.HELP,
        description=getattr(command, "DESCRIPTION", None),
    )
    command.add_arguments(p)
    p.set_defaults(func=command.run)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustar-ls",
        description="Remove spurious features from image-classification training data, "
        "inside Label Studio.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = common_parser()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _add_command(sub, command, common)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command on its own (for ``scripts/*.py`` wrappers and their --help)."""
    name = DEPRECATED_COMMANDS.get(name, name)
    command = next((c for c in COMMANDS if name == c.NAME), None)
    if command is None:
        raise KeyError(f"no robustar-ls command {name!r}")
    p = argparse.ArgumentParser(
        prog=f"robustar-ls {name}",
        parents=[common_parser()],
        description=getattr(command, "DESCRIPTION", None) or command.HELP,
    )
    command.add_arguments(p)
    p.set_defaults(func=command.run, command=name)
    return p


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # one INFO line per HTTP request to Label Studio otherwise
        logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    _setup_logging(args.verbose)
    if args.command in DEPRECATED_COMMANDS:
        new = DEPRECATED_COMMANDS[args.command]
        print(f"robustar-ls: warning: {args.command!r} is deprecated; use {new!r}", file=sys.stderr)
    try:
        return args.func(args)
    except RobustarError as err:
        print(f"robustar-ls {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"robustar-ls {args.command}: interrupted", file=sys.stderr)
        return 130
