"""Sync finished masks (when Label Studio flags are given) and run paired training.

A thin wrapper over ``robustar-ls sync-train``: every flag is that command's, e.g.::

    python scripts/sync_and_train.py --data OUT --checkpoint CKPT --masks OUT/oracle_masks --json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from robustar_ls import cli


def get_args_parser() -> argparse.ArgumentParser:
    """The ``sync-train`` sub-command's parser (for --help and for tests)."""
    return cli.command_parser("sync-train")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(["sync-train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
