"""Every ``robustar-ls`` command and ``--flag`` that README.md and docs/**/*.md show (in code
blocks and inline code) exists in the CLI's argparse parsers; every command has its page; the
README stays short and opens with the two commands a newcomer runs.

The parsers come from :func:`robustar_ls.cli.main.get_args_parser` (no subprocess). A flag
written after ``robustar-ls COMMAND`` (or after a bare command name, as in ``serve --prefetch
N``) must belong to that command; a flag on its own must belong to some command; flags of
other programs (``torchrun``, ``docker``, ``python bench/….py``, ``label-studio``, …) are not
checked.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustar_ls.cli.main import DEPRECATED_COMMANDS, get_args_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = (README, *sorted((ROOT / "docs").rglob("*.md")))
README_MAX_LINES = 300

# Programs whose own flags the docs may show; a segment run by one of them is not checked
# (a ``robustar-ls`` inside it, as after ``torchrun … --no-python`` or ``docker compose
# exec backend``, still is).
FOREIGN = {
    "bash",
    "cp",
    "curl",
    "docker",
    "export",
    "git",
    "gunicorn",
    "label-studio",
    "make",
    "pip",
    "pytest",
    "python",
    "python3",
    "ruff",
    "torchrun",
}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SEPARATORS = re.compile(r"\s+(?:\|\||\||&&|&|;|#)\s+|\s+&$|^#\s*")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers of ``parser``'s sub-commands ({} without any)."""
    for action in parser._actions:  # argparse has no public way to walk sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its sub-commands (``learned-segmenter train``)."""
    found = {s for s in parser._option_string_actions if s.startswith("--")}
    for sub in subcommands(parser).values():
        found |= flags_of(sub)
    return found


PARSER = get_args_parser()
COMMANDS = subcommands(PARSER)  # with the deprecated names (the docs may show them)
CURRENT = sorted(set(COMMANDS) - set(DEPRECATED_COMMANDS))  # each has its page
TOP_FLAGS = flags_of(argparse.ArgumentParser(add_help=True)) | {
    s for s in PARSER._option_string_actions if s.startswith("--")
}
ALL_FLAGS = TOP_FLAGS | set().union(*(flags_of(p) for p in COMMANDS.values()))


def command_flags(tokens: list[str]) -> tuple[str, set[str]]:
    """The command ``tokens`` start with (``learned-segmenter train``: its action) and its
    flags."""
    name = tokens[0]
    parser = COMMANDS[name]
    actions = subcommands(parser)
    if len(tokens) > 1 and tokens[1] in actions:
        return f"{name} {tokens[1]}", flags_of(actions[tokens[1]])
    return name, flags_of(parser)


def clean(token: str) -> str:
    return token.strip("[](){}\"',;:.…")


def program(tokens: list[str]) -> str:
    """The program a shell segment runs: its first token after ``NAME=value`` assignments."""
    for token in tokens:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", token):
            return token
    return ""


def check_segment(segment: str) -> Iterator[str]:
    """Problems in one command (a shell segment, or the text of an inline code span)."""
    raw = segment.split()
    tokens = [clean(t) for t in raw]
    for i, token in enumerate(tokens):
        if token.rsplit("/", 1)[-1] == "robustar-ls" or (
            token == "robustar_ls.cli" and i > 0 and raw[i - 1] == "-m"
        ):
            rest = tokens[i + 1 :]
            before = " ".join(raw[:i])
            break
    else:
        rest, before = None, segment
    first = clean(program(raw)).rsplit("/", 1)[-1]
    foreign = first in FOREIGN or first.endswith(".py")
    if not foreign:
        for flag in FLAG.findall(before):
            if flag not in ALL_FLAGS:
                yield f"{flag} is no flag of any robustar-ls command (in `{segment.strip()}`)"
    if rest is None:
        if tokens and tokens[0] in COMMANDS and not foreign:
            yield from check_flags(tokens, " ".join(raw[1:]), segment)
        return
    if not rest or not rest[0]:
        return
    if rest[0].startswith("--"):  # robustar-ls --help / --version
        for flag in FLAG.findall(" ".join(rest)):
            if flag not in TOP_FLAGS:
                yield f"robustar-ls has no top-level flag {flag} (in `{segment.strip()}`)"
        return
    if re.fullmatch(r"[A-Z_]+|<[\w-]+>", rest[0]):  # robustar-ls COMMAND --help: any command
        for flag in FLAG.findall(" ".join(rest)):
            if flag not in ALL_FLAGS:
                yield f"{flag} is no flag of any robustar-ls command (in `{segment.strip()}`)"
        return
    if rest[0] not in COMMANDS:
        yield f"robustar-ls has no command {rest[0]!r} (in `{segment.strip()}`)"
        return
    yield from check_flags(rest, " ".join(rest[1:]), segment)


def check_flags(tokens: list[str], text: str, segment: str) -> Iterator[str]:
    name, known = command_flags(tokens)
    for flag in FLAG.findall(text):
        if flag not in known:
            yield f"robustar-ls {name} has no flag {flag} (in `{segment.strip()}`)"


def code_lines(block: str) -> Iterator[str]:
    """The logical lines of a code block: ``\\`` continuations joined, and so are indented
    lines that go on with options (``    [--size 32] …``)."""
    line = ""
    for raw in block.splitlines():
        if line.endswith("\\"):
            line = line[:-1] + " " + raw.strip()
        elif line and re.match(r"\s+[\[-]", raw):
            line += " " + raw.strip()
        else:
            if line:
                yield line
            line = raw.rstrip()
    if line:
        yield line


def segments(line: str) -> list[str]:
    """A shell line cut at pipes, ``&&``, ``;``, ``&`` and comments."""
    return [part for part in SEPARATORS.split(line) if part and part.strip()]


def snippets(text: str) -> Iterator[str]:
    """Every command the text shows: code-block lines, then inline code spans."""
    for block in FENCE.findall(text):
        for line in code_lines(block):
            yield from segments(line)
    for span in INLINE.findall(FENCE.sub("", text)):
        yield " ".join(span.split())


def problems(text: str) -> list[str]:
    return [problem for snippet in snippets(text) for problem in check_segment(snippet)]


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_parsers_are_walked():
    names = {"make-dataset", "train", "sync-train", "serve", "learned-segmenter", "demo"}
    assert names <= set(CURRENT) and "segmenter" not in CURRENT  # the old name: no page
    assert "--prefetch" in flags_of(COMMANDS["serve"])
    assert "--steps" in flags_of(COMMANDS["learned-segmenter"])  # its train's, one level down
    assert {"--config", "--json", "--help"} <= flags_of(COMMANDS["history"])
    assert "--version" in TOP_FLAGS


def test_the_checker_finds_what_it_should():
    text = """
```bash
robustar-ls train --data D --out m.pt \\
    --epochs 3 --no-such-flag
robustar-ls make-dataset OUT --kind patch
    [--size 32] [--per-class 5] [--bogus 1]
robustar-ls frobnicate --data D
torchrun --nproc-per-node 4 --no-python robustar-ls influence --data D --top 5 --steps 3
python bench/compare_masks.py --seg-size 800   # --json is fine, --nope is not
docker compose --profile gpu run --rm trainer
```
`serve --prefetch N`, `serve --epochs 3`, `--balance-classes`, `--made-up`,
`robustar-ls learned-segmenter train --steps 300`, `robustar-ls segmenter eval --steps 3`,
`robustar-ls --version`, `robustar-ls COMMAND --help`,
`label-studio start --enable-legacy-api-token`
"""
    found = problems(text)
    assert found == [
        "robustar-ls train has no flag --no-such-flag (in `robustar-ls train --data D --out m.pt"
        "  --epochs 3 --no-such-flag`)",
        "robustar-ls make-dataset has no flag --bogus (in `robustar-ls make-dataset OUT --kind "
        "patch [--size 32] [--per-class 5] [--bogus 1]`)",
        "robustar-ls has no command 'frobnicate' (in `robustar-ls frobnicate --data D`)",
        "robustar-ls influence has no flag --steps (in `torchrun --nproc-per-node 4 --no-python "
        "robustar-ls influence --data D --top 5 --steps 3`)",
        "--nope is no flag of any robustar-ls command (in `--json is fine, --nope is not`)",
        "robustar-ls serve has no flag --epochs (in `serve --epochs 3`)",
        "--made-up is no flag of any robustar-ls command (in `--made-up`)",
        "robustar-ls segmenter eval has no flag --steps (in `robustar-ls segmenter eval --steps "
        "3`)",
    ]


@pytest.mark.parametrize("doc", DOCS, ids=relative)
def test_every_command_and_flag_shown_exists(doc):
    found = problems(doc.read_text())
    assert not found, f"{relative(doc)}:\n" + "\n".join(found)


def test_the_docs_show_commands():
    """The walk reads the docs at all: the README and the command pages show commands."""
    shown = [s for doc in DOCS for s in snippets(doc.read_text()) if "robustar-ls " in s]
    assert len(shown) > 50, "the docs show almost no robustar-ls command (the parsing broke)"


@pytest.mark.parametrize("name", CURRENT)
def test_every_command_has_its_page(name):
    """One page per command, under docs/commands/, showing ``robustar-ls <command>``."""
    page = ROOT / "docs" / "commands" / f"{name}.md"
    assert page.is_file(), f"robustar-ls {name} has no page {relative(page)}"
    assert f"robustar-ls {name}" in page.read_text()
    assert f"docs/commands/{name}.md" in README.read_text(), "the README links every page"


@pytest.mark.parametrize("name", CURRENT)
def test_flags_on_a_command_page_are_its_own(name):
    """On ``docs/commands/<command>.md`` a flag shown on its own (the flag tables) is one of
    that command's: another command's flag is written with its command (``influence
    --balance-classes``)."""
    known = flags_of(COMMANDS[name])
    text = (ROOT / "docs" / "commands" / f"{name}.md").read_text()
    spans = [" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text))]
    foreign = sorted(
        {flag for span in spans if span.startswith("--") for flag in FLAG.findall(span)} - known
    )
    assert not foreign, f"docs/commands/{name}.md shows flags robustar-ls {name} lacks: {foreign}"


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference "
        "material to docs/ and measurements to bench/README.md"
    )


def test_the_readme_starts_with_the_two_commands():
    """The README's first code block: ``make demo`` (the main job on the built-in demo), then
    ``make test``."""
    text = README.read_text()
    first = FENCE.search(text)
    assert first is not None, "the README has no code block"
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert [c for c in commands if c][:2] == ["make demo", "make test"]
    opens_at = text[: first.start()].count("\n") + 1
    assert opens_at <= 40, f"the two commands come on line {opens_at}: keep them near the top"
