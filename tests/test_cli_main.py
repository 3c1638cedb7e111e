"""The CLI package: every command module plugs in the same way, one error path, shared flags."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from robustar_ls.cli import command_parser, get_args_parser, main
from robustar_ls.cli.main import COMMANDS
from robustar_ls.cli.options import API_KEY_MESSAGE, UserError
from robustar_ls.errors import RobustarError


def test_every_command_module_has_the_same_shape():
    names = [command.NAME for command in COMMANDS]
    assert len(names) == len(set(names))
    for command in COMMANDS:
        assert command.HELP and callable(command.add_arguments) and callable(command.run)
        parser = command_parser(command.NAME)
        assert parser.prog == f"robustar-ls {command.NAME}"


def test_command_parser_matches_the_sub_command():
    args = command_parser("sync-train").parse_args(["--data", "d", "--checkpoint", "c"])
    full = get_args_parser().parse_args(["sync-train", "--data", "d", "--checkpoint", "c"])
    assert vars(args) == vars(full)
    with pytest.raises(KeyError, match="no robustar-ls command"):
        command_parser("nope")


@pytest.mark.parametrize("name", ["sync-train", "import", "influence", "serve"])
def test_label_studio_url_has_one_dest(name):
    argv = {"serve": ["--checkpoint", "c"], "import": ["--data", "d"]}.get(
        name, ["--data", "d", "--checkpoint", "c"]
    )
    args = command_parser(name).parse_args([*argv, "--label-studio-url", "http://ls:1"])
    assert args.label_studio_url == "http://ls:1" and not hasattr(args, "url")


@pytest.mark.parametrize(
    "argv",
    [
        ["import", "--data", "d", "--label-studio-url", "http://ls.test:1"],
        ["influence", "--data", "d", "--checkpoint", "c", "--project", "P"],
        ["sync-train", "--data", "d", "--checkpoint", "c", "--label-studio-url", "http://x:1"],
    ],
    ids=lambda argv: argv[0],
)
def test_one_api_key_message(argv, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_USER_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"robustar-ls {argv[0]}: error: {API_KEY_MESSAGE}"


def test_any_robustar_error_is_one_line_with_its_exit_code(monkeypatch, capsys):
    class Custom(RobustarError):
        exit_code = 3

    def boom(args: argparse.Namespace) -> int:
        raise Custom("what went wrong")

    from robustar_ls.cli import evaluate

    monkeypatch.setattr(evaluate, "run", boom)
    assert main(["eval", "--data", "d", "--checkpoint", "c"]) == 3
    assert capsys.readouterr().err == "robustar-ls eval: error: what went wrong\n"


def test_other_errors_keep_their_traceback(monkeypatch):
    from robustar_ls.cli import evaluate

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(evaluate, "run", bug)
    with pytest.raises(ZeroDivisionError):
        main(["eval", "--data", "d", "--checkpoint", "c"])


def test_user_error_is_a_robustar_error():
    assert issubclass(UserError, RobustarError)


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "robustar_ls.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("robustar-ls ")


def test_building_the_parser_imports_neither_torch_nor_the_sdk():
    code = (
        "import sys; from robustar_ls.cli import get_args_parser; get_args_parser(); "
        "print('torch' in sys.modules, 'label_studio_sdk' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]
