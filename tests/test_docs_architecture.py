"""docs/architecture.md keeps in step with the code: it names every ``robustar-ls`` command the
CLI's parser has (and the module that runs it), and every module it cites, with the name it
cites in it (``workflows/jobs.TrainingJobs``), exists.

tests/test_docs_paths.py checks the ``pkg/module.py`` paths of every docs page; this one also
reads ``config/`` paths and the ``pkg/module.name`` form, and looks the name up in the module's
source (no import).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

from robustar_ls.cli.main import COMMANDS, DEPRECATED_COMMANDS, get_args_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robustar_ls"
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = "data|models|explain|train|labelstudio|workflows|backend|cli|config"
# ``train/recipe.py``, ``robustar_ls/cli/main.py``, ``data/masks.MaskStore``,
# ``train/recipe.choose``, ``labelstudio/client/storage.create_local_storage``
CITED = re.compile(rf"(?<![\w/.<>-])(?:robustar_ls/)?((?:{PACKAGES})(?:/\w+)+)(?:\.(\w+))?")


def parser_commands() -> set[str]:
    """The sub-commands of ``robustar-ls``, without the deprecated names."""
    parser = get_args_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices) - set(DEPRECATED_COMMANDS)


def cited(text: str) -> set[tuple[str, str | None]]:
    """(package-relative path without suffix, name in it or None) for each module cited."""
    return {(path, None if name == "py" else name) for path, name in CITED.findall(text)}


@cache
def top_level_names(source: Path) -> frozenset[str]:
    """The names a module binds at its top level (definitions, assignments, imports)."""
    names = set()
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def problem(path: str, name: str | None) -> str | None:
    """Why ``path`` (``name`` in it) does not exist, or None."""
    module = PACKAGE / f"{path}.py"
    if not module.is_file():
        module = PACKAGE / path / "__init__.py"  # a package
    if not module.is_file():
        return f"{path}: no such module"
    if name is not None and name not in top_level_names(module):
        return f"{path}.{name}: {module.relative_to(ROOT)} defines no {name}"
    return None


def test_the_pattern_reads_both_forms():
    text = (
        "`train/recipe.py`, robustar_ls/cli/main.py, `data/masks.MaskStore`, "
        "config/training.py; not <data>/masks.x, train/ or files.py"
    )
    assert cited(text) == {
        ("train/recipe", None),
        ("cli/main", None),
        ("data/masks", "MaskStore"),
        ("config/training", None),
    }
    assert problem("data/masks", "MaskStore") is None
    assert problem("config", "PairedConfig") is None  # a package's __init__
    assert problem("data/masks", "NoSuchThing") is not None
    assert problem("train/nowhere", None) is not None


def test_every_command_of_the_parser_is_named():
    text = DOC.read_text()
    commands = parser_commands()
    assert {"sync-train", "serve", "simulate"} <= commands  # the parser is read
    missing = sorted(c for c in commands if not re.search(rf"robustar-ls {c}(?![\w-])", text))
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_every_command_module_is_named():
    text = DOC.read_text()
    modules = {c.__name__.rsplit(".", 1)[-1] for c in COMMANDS}
    missing = sorted(m for m in modules if f"cli/{m}.py" not in text)
    assert not missing, f"docs/architecture.md does not name the command modules: {missing}"


def test_every_cited_module_and_name_exists():
    found = cited(DOC.read_text())
    assert len(found) > 40, f"the pattern reads almost nothing: {sorted(found)}"
    bad = sorted(filter(None, (problem(path, name) for path, name in found)))
    assert not bad, f"docs/architecture.md cites what does not exist: {bad}"


@pytest.mark.parametrize(
    "section",
    ["One `/predict` request", "One `sync-train` run", "One Start Training", "Commands", "Layers"],
)
def test_the_page_has_its_sections(section):
    assert re.search(rf"^##+ {re.escape(section)}$", DOC.read_text(), re.M)
