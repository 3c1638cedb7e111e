"""bench/: every script imports (none is run), none imports another, and bench/common.py's
table and JSON-lines helpers."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")
NAMES = {p.stem for p in BENCH.glob("*.py")}


@pytest.fixture
def on_bench_path(monkeypatch):
    """What ``python bench/X.py`` gives a script: bench/ first on sys.path (and a fresh
    ``common``, dropped again afterwards)."""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("common", None)
    yield
    sys.modules.pop("common", None)


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def common(on_bench_path):
    return load(BENCH / "common.py")


def imported(path: Path) -> set[str]:
    """Top-level module names that ``path`` imports, wherever in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_there_are_scripts():
    assert len(SCRIPTS) > 10


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_no_bench_script_imports_another(path):
    others = (imported(path) & NAMES) - {"common"}
    assert not others, f"{path.name} imports {sorted(others)}: move the shared code to common.py"
    assert "sys.path" not in path.read_text().replace("``sys.path``", ""), path.name


def test_common_imports_no_bench_script():
    assert not imported(BENCH / "common.py") & (NAMES - {"common"})


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports(path, on_bench_path):
    module = load(path)
    assert module.__doc__, f"{path.name} has no docstring (its --help description)"
    parser = getattr(module, "get_args_parser", None)
    if parser is not None:
        assert parser().description


def test_common_is_light(common):
    """Scripts that time their own imports pay nothing for it: the standard library only."""
    heavy = {"torch", "numpy", "PIL", "robustar_ls"}
    assert not imported(BENCH / "common.py") - set(sys.stdlib_module_names) - heavy
    top = ast.parse((BENCH / "common.py").read_text()).body
    at_top = {n.names[0].name.split(".")[0] for n in top if isinstance(n, ast.Import)}
    at_top |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
    assert not at_top & heavy


def test_markdown_table(common):
    lines = common.markdown_table(["kind", "a", "b"], [["patch", 0.5, ""], ["digits", "–", "x"]])
    assert lines == [
        "| kind | a | b |",
        "|---|---|---|",
        "| patch | 0.5 | |",
        "| digits | – | x |",
    ]
    assert common.markdown_table(["only"], []) == ["| only |", "|---|"]


def test_plain_table(common):
    columns = [("case", "case", "<6"), ("ms", "ms", ">7.2f"), ("n", "n", ">3")]
    rows = [{"case": "a", "ms": 1.234, "n": 7}, {"case": "bb", "ms": 10.0, "n": 12}]
    assert common.plain_table(columns, rows) == [
        "case        ms   n",
        "-" * 18,
        "a         1.23   7",
        "bb       10.00  12",
    ]
    assert common.plain_table(columns, rows, rule=False)[1] == "a         1.23   7"


def test_mean_cell(common):
    assert common.mean_cell([]) == "–"
    assert common.mean_cell([0.5]) == "0.50"
    assert common.mean_cell([0.5, 1.0]) == "**0.75** (0.50 / 1.00)"
    assert common.mean_cell([2.0, 4.0], 1) == "**3.0** (2.0 / 4.0)"


def test_jsonl_round_trip(common, tmp_path):
    path = tmp_path / "rows.jsonl"
    assert common.read_jsonl(path) == []
    common.append_jsonl(path, {"a": 1})
    common.append_jsonl(str(path), {"b": [2]})
    path.write_text(path.read_text() + "\n")  # a blank line is skipped
    other = tmp_path / "more.jsonl"
    common.append_jsonl(other, {"c": None})
    assert common.read_jsonl(path, other, tmp_path / "missing") == [
        {"a": 1},
        {"b": [2]},
        {"c": None},
    ]


def test_make_parser(common):
    doc = "First line\nstill the first paragraph.\n\nMore."
    assert common.make_parser(doc).description == "First line"
    assert (
        common.make_parser(doc, "paragraph").description == "First line\nstill the first paragraph."
    )
    assert common.make_parser(doc, "all").description == doc
    with pytest.raises(ValueError):
        common.make_parser(doc, "nope")


def test_segmenter_flags(common):
    p = common.make_parser("x")
    common.add_segmenter_flags(p)
    assert common.segmenter_overrides(p.parse_args([])) == {}
    given = common.segmenter_overrides(p.parse_args(["--seg-size", "512", "--detections", "5"]))
    assert given == {"min_size": 512, "max_size": 512, "detections_per_img": 5}
