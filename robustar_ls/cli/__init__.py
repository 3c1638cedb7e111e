"""The ``robustar-ls`` command line: argparse only, one module per command (see ``main``)."""

from robustar_ls.cli.main import command_parser, get_args_parser, main

__all__ = ["command_parser", "get_args_parser", "main"]
