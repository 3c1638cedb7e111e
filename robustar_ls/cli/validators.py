"""Validated command-line values: argparse ``type=`` functions and output-path checks.

A bad number is refused while the command line is parsed (usage line + one-line error, exit
2), before any data is read or any model trained: ``--epochs 0``, ``--lr -5``,
``--batch-size 0`` never start a run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from robustar_ls.errors import RobustarError


class OutputPathError(RobustarError):
    """An output file cannot be written where the user asked."""


def _number(kind: type, text: str) -> float:
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None


def _checked(kind: type, ok: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(text: str):
        value = _number(kind, text)
        if value != value or not ok(value):  # NaN fails every rule
            raise argparse.ArgumentTypeError(f"{text!r}: must be {rule}")
        return value

    parse.__name__ = rule.replace(" ", "_")  # argparse names the type in some messages
    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = _checked(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
fraction = _checked(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")
port_number = _checked(int, lambda v: 0 < v < 65536, "a port number from 1 to 65535")


def prepare_output_file(path: str | Path) -> Path:
    """Make sure a file can be written at ``path`` *before* a long run, or say why not.

    Refuses an existing folder, creates missing parent folders, and writes (then removes) a
    probe file beside it; raises :class:`OutputPathError` with one line.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give a file name, e.g. {path / 'model.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"cannot write {path}: {err.strerror}") from err
    return path
