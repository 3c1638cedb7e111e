"""Every module path the README and docs/architecture.md mention exists in the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/architecture.md")
PACKAGES = "data|models|explain|train|labelstudio|workflows|backend|cli"
MODULE = re.compile(
    rf"(?<![\w/.-])(?:robustar_ls/)?((?:{PACKAGES})/[\w/]*\w\.py|robustar_ls/\w+\.py)"
)


def mentioned_modules(text: str) -> set[str]:
    """Package-relative module paths in ``text`` (``robustar_ls/`` prefix optional)."""
    return {m.removeprefix("robustar_ls/") for m in MODULE.findall(text)}


def test_the_pattern_finds_both_forms():
    text = "see robustar_ls/files.py, `backend/app.py` and robustar_ls/cli/main.py, not bench/x.py"
    assert mentioned_modules(text) == {"files.py", "backend/app.py", "cli/main.py"}


@pytest.mark.parametrize("doc", DOCS)
def test_every_mentioned_module_exists(doc):
    found = mentioned_modules((ROOT / doc).read_text())
    assert found, f"{doc} mentions no module (the pattern is broken)"
    missing = sorted(m for m in found if not (ROOT / "robustar_ls" / m).is_file())
    assert not missing, f"{doc} mentions modules that do not exist: {missing}"
