"""Every module path, repository file and link that README.md and docs/**/*.md cite exists,
inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")))
PACKAGES = "data|models|explain|train|labelstudio|workflows|backend|cli"
MODULE = re.compile(
    rf"(?<![\w/.-])(?:robustar_ls/)?((?:{PACKAGES})/[\w/]*\w\.py|robustar_ls/\w+\.py)"
)
# Repository files cited from the root: bench/…, tests/…, scripts/…, docs/…, label_config/…,
# constraints/…, workspace/…, and the root's own files.
TOP_DIRS = "bench|tests|scripts|docs|label_config|constraints|workspace|\\.ci"
REPO_FILE = re.compile(
    rf"(?<![\w/.<-])((?:{TOP_DIRS})/[\w./-]*\w\.(?:py|md|png|xml|txt|sh|yml|yaml|json|toml)"
    r"|(?:docker-compose\.yml|Dockerfile|Makefile|pyproject\.toml|\.env\.example|\.ci/run))"
    r"(?![\w/-])"
)
FENCE = re.compile(r"^```[^\n]*\n.*?^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def mentioned_modules(text: str) -> set[str]:
    """Package-relative module paths in ``text`` (``robustar_ls/`` prefix optional)."""
    return {m.removeprefix("robustar_ls/") for m in MODULE.findall(text)}


def mentioned_files(text: str) -> set[str]:
    """Repository-relative file paths in ``text`` (``bench/bench_brush.py``, ``Makefile``)."""
    return set(REPO_FILE.findall(text))


def test_the_pattern_finds_both_forms():
    text = "see robustar_ls/files.py, `backend/app.py` and robustar_ls/cli/main.py, not bench/x.py"
    assert mentioned_modules(text) == {"files.py", "backend/app.py", "cli/main.py"}


def test_the_file_pattern():
    text = (
        "run `bench/bench_brush.py`, see docs/commands/serve.md and `Makefile`; "
        "`workspace/data/$DATASET` and <data>/docs/x.md and models/torch/a.pth are no files"
    )
    assert mentioned_files(text) == {"bench/bench_brush.py", "docs/commands/serve.md", "Makefile"}


@pytest.mark.parametrize("doc", DOCS)
def test_every_mentioned_module_exists(doc):
    found = mentioned_modules((ROOT / doc).read_text())
    missing = sorted(m for m in found if not (ROOT / "robustar_ls" / m).is_file())
    assert not missing, f"{doc} mentions modules that do not exist: {missing}"


def test_the_docs_mention_modules():
    """The module check reads something (the pattern is not broken)."""
    found = set().union(*(mentioned_modules((ROOT / doc).read_text()) for doc in DOCS))
    assert len(found) > 10, f"the docs mention almost no module: {sorted(found)}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_mentioned_file_exists(doc):
    found = mentioned_files((ROOT / doc).read_text())
    missing = sorted(f for f in found if not (ROOT / f).is_file())
    assert not missing, f"{doc} mentions files that do not exist: {missing}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (outside code blocks)."""
    text = FENCE.sub("", path.read_text())
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", (*DOCS, "bench/README.md"))
def test_every_in_page_link_has_its_heading(doc):
    """A README edit once dropped six sections at once; its Contents links then pointed at
    nothing. Every ``(#anchor)`` link must match a heading of the same file."""
    text = (ROOT / doc).read_text()
    links = set(re.findall(r"\]\(#([\w\-]+)\)", text))
    assert github_anchor("Annotation budget: simulate") == "annotation-budget-simulate"
    missing = sorted(links - headings(ROOT / doc))
    assert not missing, f"{doc} links to headings it does not have: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_resolves_inside_the_repository(doc):
    """Relative links (``docs/backend.md#limits``, ``../bench/README.md#influence``, images)
    land on a file of this repository, and on a heading of it when they name one; the docs
    cite nothing outside the repository but web pages."""
    path = ROOT / doc
    bad = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"https?://", target) or target.startswith("#"):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve()
        if target.startswith(("/", "file:", "~")) or ROOT not in resolved.parents:
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in headings(resolved):
            bad.append(f"{target} (no such heading)")
    assert not bad, f"{doc} has broken links: {bad}"


def test_links_to_other_readme_sections_resolve():
    """``bench/README.md#section`` links from the README land on a heading there."""
    text = (ROOT / "README.md").read_text()
    links = set(re.findall(r"\]\(bench/README\.md#([\w\-]+)\)", text))
    assert links, "the README links to no bench section (the pattern is broken)"
    assert not sorted(links - headings(ROOT / "bench" / "README.md"))
