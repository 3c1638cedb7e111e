#!/usr/bin/env python
"""Create or update the Label Studio project for a dataset (same as ``robustar-ls import``).

Example::

    LABEL_STUDIO_API_KEY=... python scripts/import_project.py --data /data/ds \\
        --label-studio-url http://localhost:8080 --project "My dataset" \\
        --document-root /data --backend-url http://localhost:9090
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from robustar_ls import cli


def get_args_parser() -> argparse.ArgumentParser:
    """The parser of ``robustar-ls import``."""
    return cli.command_parser("import")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(["import", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
