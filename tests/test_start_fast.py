"""Commands that need no model start without torch (and without the SDK's pandas extras).

Each command runs in a fresh interpreter (``robustar_ls.cli.main``), then the test reads which
heavy packages that process loaded. tests/e2e/test_import.py checks `import` and a sync dry run
against a real Label Studio the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "pandas", "label_studio_sdk.label_interface")

# Runs one command in-process, then prints its exit status and the heavy modules it loaded.
RUNNER = """
import json, sys
{setup}
from robustar_ls.cli.main import main
try:
    rc = main({argv!r})
except SystemExit as exit:  # --help
    rc = exit.code
print("RESULT " + json.dumps({{"rc": rc, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""

# A fake Label Studio for the sync: one task whose annotation paints a Spurious box.
FAKE_SYNC = """
import robustar_ls.labelstudio.client as ls
import robustar_ls.workflows.project as project
from tests.fake_ls import FakeClient, annotation, box, region, task
tasks = [task(1, "cat/0.png", [annotation(5, "2026-01-01T00:00:00Z", [region(box(0, 2, 0, 2))])])]
ls.connect = lambda url, api_key: FakeClient(tasks)
project.project_id = lambda client, label_studio: 7
"""


def run_command(argv: list[str], setup: str = "", api_key: str = "some-token") -> dict:
    """Run ``robustar-ls ARGV`` in a fresh interpreter: ``{rc, loaded, stdout}``."""
    code = RUNNER.format(setup=setup, argv=argv, heavy=HEAVY)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LABEL_STUDIO_API_KEY": api_key}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, result.stdout + result.stderr
    return {**json.loads(line[len("RESULT ") :]), "stdout": result.stdout}


def small_dataset(root: Path) -> Path:
    for name in ("cat", "dog"):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 6), (10, 20, 30)).save(folder / "0.png")
    return root


def test_help_loads_nothing_heavy():
    for argv in (["--help"], ["import", "--help"], ["sync-train", "--help"]):
        result = run_command(argv)
        assert result["rc"] == 0 and result["loaded"] == [], (argv, result)


def test_history_loads_nothing_heavy(tmp_path):
    checkpoint = tmp_path / "model.pt"
    entry = {"version": "v1", "kind": "train", "after": {"train": 0.5}, "epochs": []}
    (tmp_path / "model.pt.history.jsonl").write_text(json.dumps(entry) + "\n")
    result = run_command(["history", "--checkpoint", str(checkpoint)])
    assert result["rc"] == 0 and "v1" in result["stdout"]
    assert result["loaded"] == []


def test_sync_dry_run_loads_no_torch(tmp_path):
    data = small_dataset(tmp_path / "ds")
    argv = ["sync-train", "--data", str(data), "--checkpoint", str(tmp_path / "none.pt")]
    argv += ["--label-studio-url", "http://ls.test", "--project", "p", "--dry-run", "--json"]
    result = run_command(argv, setup=FAKE_SYNC)
    assert result["rc"] == 0, result["stdout"]
    assert '"added": 1' in result["stdout"] or '"added": ["cat/0.png"]' in result["stdout"]
    # the label config is parsed (the brush tag's name), so the label interface may load
    assert [m for m in result["loaded"] if m != "label_studio_sdk.label_interface"] == []
    assert not (data / "masks").exists()  # a dry run writes nothing


def test_import_up_to_label_studio_loads_nothing_heavy(tmp_path):
    data = small_dataset(tmp_path / "ds")
    argv = ["import", "--data", str(data), "--project", "p", "-q"]
    argv += ["--label-studio-url", "http://127.0.0.1:9", "--document-root", str(tmp_path)]
    result = run_command(argv)
    assert result["rc"] == 2  # nothing listens on port 9: the command ran up to connecting
    assert result["loaded"] == []
