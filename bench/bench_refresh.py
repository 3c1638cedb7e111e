"""The backend's influence rerun after a new model version vs a cold ``robustar-ls influence``.

On the demo's dataset and model (``robustar-ls demo``'s ``patch`` set, 800 training images by
default), with a real Label Studio and ``robustar-ls serve --data`` (one gunicorn worker), in
one run, for each of ``--rounds`` new model versions (the served checkpoint's weights nudged and
saved over it, as training does):

(a) the refresh: from the checkpoint written to the backend's ``/health`` saying influence for
    that version is in the tasks (featurize + score + write), and to the prefetch after it done
    (test errors + top 100 predictions stored): nothing run by hand;
(b) a cold ``robustar-ls influence`` of the same version in a subprocess (feature cache emptied
    first, as it was for (a)), writing into a second project of the same images whose tasks
    hold the previous version's fields (so both write every task, as after a real training).

Reports (a)/(b) per version; the acceptance is (a) ≤ 1.5 × (b). The wall times are printed for
context only (shared machine)::

    OMP_NUM_THREADS=1 python bench/bench_refresh.py --label-studio-bin .venv-ls/bin/label-studio
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from common import make_parser

from robustar_ls.models.checkpoint import load_checkpoint, save_checkpoint
from robustar_ls.workflows import demo
from robustar_ls.workflows.label_studio import free_port, running_label_studio


def _nudged(checkpoint: Path, seed: int) -> str:
    """Save the checkpoint again with its weights nudged: a new model version (as training)."""
    ckpt = load_checkpoint(checkpoint)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in ckpt.model.parameters():
            param.add_(torch.randn_like(param) * 1e-3)
    return save_checkpoint(checkpoint, ckpt.model, arch=ckpt.arch, classes=ckpt.classes,
                           image_size=ckpt.image_size, width=ckpt.width)  # fmt: skip


def _wait(url: str, version: str, prefetch: bool, timeout: float = 3600) -> float:
    """Seconds until /health says influence (or, with ``prefetch``, the prefetch too) is done
    for ``version``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        health = httpx.get(f"{url}/health", timeout=10).json()
        status = health.get("prefetch") or {}
        influence = status.get("influence") or {}
        ready = influence.get("model_version") == version and influence.get("state") == "done"
        if ready and prefetch:
            ready = status.get("state") == "done" and status.get("model_version") == version
        if influence.get("state") == "failed":
            raise SystemExit(f"influence failed: {influence}")
        if ready:
            return time.monotonic() - start
        time.sleep(0.25)
    raise SystemExit(f"no influence for {version} within {timeout} s")


CLI_PROJECT = "robustar-ls bench: cold CLI influence"


def _cold_cli(data: Path, checkpoint: Path, ls, env: dict) -> float:
    shutil.rmtree(data / ".robustar" / "influence", ignore_errors=True)
    command = [sys.executable, "-m", "robustar_ls.cli", "influence", "--data", str(data),
               "--checkpoint", str(checkpoint), "--label-studio-url", ls.url, "--project",
               CLI_PROJECT, "--balance-classes", "--prefetch", "0", "-q"]  # fmt: skip
    start = time.monotonic()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--label-studio-bin", required=True)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--per-class", type=int, default=200, help="the demo's size: 200")
    parser.add_argument("--rounds", type=int, default=2, help="new model versions")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-refresh-")).resolve()
    cfg = demo.DemoConfig(workdir=str(work), per_class=args.per_class)
    documents = work / "documents"
    data, model = documents / "patch", work / "model.pt"
    demo.prepare_model(cfg, data, model, None)
    creds = demo.demo_credentials(work / "credentials.json")
    with running_label_studio(args.label_studio_bin, work / "label-studio", credentials=creds,
                              port=free_port(), document_root=documents,
                              personal_access_token=False) as ls:  # fmt: skip
        env = dict(os.environ, LABEL_STUDIO_API_KEY=ls.legacy_token)
        with demo.running_backend(model, documents, data, free_port(), ls,
                                  work / "backend.log") as url:  # fmt: skip
            demo.import_and_rank(ls, data, url, work, "", None)  # the first ranks (v1)
            subprocess.run([sys.executable, "-m", "robustar_ls.cli", "import", "--data",
                            str(data), "--label-studio-url", ls.url, "--project", CLI_PROJECT,
                            "--document-root", str(documents), "-q"],
                           env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            _cold_cli(data, model, ls, env)  # the CLI project holds the fields of v1 too
            rows = []
            for round_ in range(1, args.rounds + 1):
                shutil.rmtree(data / ".robustar" / "influence", ignore_errors=True)
                version = _nudged(model, round_)
                refresh = _wait(url, version, prefetch=False)
                with_prefetch = refresh + _wait(url, version, prefetch=True)
                cli = _cold_cli(data, model, ls, env)
                rows.append({"version": version, "refresh_s": round(refresh, 1),
                             "refresh_and_prefetch_s": round(with_prefetch, 1),
                             "cold_cli_s": round(cli, 1),
                             "ratio": round(refresh / cli, 2)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    ratios = [row["ratio"] for row in rows]
    print(f"refresh / cold CLI influence: {', '.join(map(str, ratios))} (target <= 1.5)")


if __name__ == "__main__":
    main()
