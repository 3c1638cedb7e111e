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


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ("README.md", "bench/README.md"))
def test_every_in_page_link_has_its_heading(doc):
    """A README edit once dropped six sections at once; its Contents links then pointed at
    nothing. Every ``(#anchor)`` link must match a heading of the same file."""
    text = (ROOT / doc).read_text()
    headings = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    links = set(re.findall(r"\]\(#([\w\-]+)\)", text))
    assert github_anchor("Annotation budget: simulate") == "annotation-budget-simulate"
    missing = sorted(links - headings)
    assert not missing, f"{doc} links to headings it does not have: {missing}"


def test_links_to_other_readme_sections_resolve():
    """``bench/README.md#section`` links from the README land on a heading there."""
    text = (ROOT / "README.md").read_text()
    bench = (ROOT / "bench" / "README.md").read_text()
    headings = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", bench, flags=re.M)}
    links = set(re.findall(r"\]\(bench/README\.md#([\w\-]+)\)", text))
    assert links, "the README links to no bench section (the pattern is broken)"
    assert not sorted(links - headings)
