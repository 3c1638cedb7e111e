"""Scale bench: `import`, its rerun, influence write-back and a sync dry run against a real
Label Studio (SQLite) at several project sizes, with ratios measured in one run.

For each size N (tasks = training images): a dataset of N tiny images is made under the
server's document root, then

- ``robustar-ls import`` (a fresh process, start-up included) and the rerun on the unchanged
  project;
- 200 tasks get a Spurious brush annotation (not timed);
- ``robustar-ls sync-train --dry-run`` (a fresh process), and in this process the sync's fetch
  (annotated tasks, only id/data/annotations) against the old fetch of every task with all
  fields (the baseline);
- influence write-back of the 200 highest scores (``write_influence(top=200)``).

``--no-fetch-before`` skips the old fetch (slow: every task with all fields); ``--import-only``
times only the import and its rerun (the 100,000-task row).

Start-up: ``robustar-ls --help`` and ``import`` against the wall of importing torch and
torchvision (what every data command paid before). Needs ``label-studio`` (1.23):

    ROBUSTAR_LS_LABEL_STUDIO_BIN=.venv-ls/bin/label-studio \\
        python bench/bench_scale.py --sizes 1000,10000 --annotated 200 --workdir /tmp/bench-scale
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import make_parser, tiny_image_folder

from robustar_ls.config import SyncConfig
from robustar_ls.explain.influence_types import InfluenceResult
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.brush import mask_to_rle
from robustar_ls.labelstudio.influence_fields import write_influence
from robustar_ls.labelstudio.results import BrushRegion
from robustar_ls.workflows.label_studio import running_label_studio

SIZE = 8  # pixels: the images' content does not matter here


def timed_cli(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of ``robustar-ls ARGV`` in a fresh interpreter, and its stdout."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "robustar_ls.cli", *argv], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"robustar-ls {argv[0]} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def timed_python(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def annotate(client, task_ids: list[int]) -> None:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[: SIZE // 2, : SIZE // 2] = 255
    region = BrushRegion("spurious", "image", mask_to_rle(mask), "Spurious", SIZE, SIZE)
    result = [region.to_dict()]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda tid: client.annotations.create(id=tid, result=result), task_ids))


def fake_scores(relpaths: list[str], seed: int = 0) -> InfluenceResult:
    rng = random.Random(seed)
    scores = {rel: rng.random() for rel in relpaths}
    order = sorted(scores, key=scores.__getitem__, reverse=True)
    ranks = {rel: i + 1 for i, rel in enumerate(order)}
    return InfluenceResult("bench", scores, ranks, {}, {}, [])


def bench_size(
    server, n: int, annotated: int, env: dict[str, str], steps: frozenset[str] = frozenset()
) -> dict[str, float]:
    """One size's row; ``steps`` may hold "import-only" and "no-fetch-before"."""
    title = f"bench-scale-{n}"
    data = tiny_image_folder(server.document_root / f"scale-{n}", n, size=SIZE)
    common = ["--data", str(data), "--project", title, "--label-studio-url", server.url]
    common += ["--document-root", str(server.document_root), "-q"]
    row: dict[str, float] = {"tasks": n}
    row["import_s"], _ = timed_cli(["import", *common], env)
    row["rerun_s"], out = timed_cli(["import", *common, "--json"], env)
    summary = json.loads(out)
    assert summary["created_tasks"] == 0 and summary["existing_tasks"] == n, summary
    if "import-only" in steps:
        print(json.dumps(row), flush=True)
        return row
    client = server.client("legacy")
    pid = summary["project_id"]
    train = ls.tasks_by_split(client, pid)["train"]
    ids = sorted(t.id for t in train.values())
    annotate(client, random.Random(1).sample(ids, annotated))
    sync = ["sync-train", "--data", str(data), "--checkpoint", str(data / "none.pt")]
    sync += ["--label-studio-url", server.url, "--project", title, "--dry-run", "--json", "-q"]
    row["sync_dry_run_s"], out = timed_cli(sync, env)
    assert json.loads(out)["sync"]["counts"]["added"] == annotated, out
    policy = ls.RetryPolicy()
    t0 = time.perf_counter()
    fetched = ls.fetch_annotated_tasks(client, pid, SyncConfig().page_size, policy)
    row["fetch_annotated_s"] = time.perf_counter() - t0
    assert len(fetched) == annotated
    if "no-fetch-before" not in steps:
        t0 = time.perf_counter()
        every = ls.fetch_tasks(client, pid, 100, policy)  # before: every task, all fields
        row["fetch_all_s"] = time.perf_counter() - t0
        assert len(every) == n
    t0 = time.perf_counter()
    write_influence(client, pid, fake_scores(sorted(train)), top=annotated)
    row["influence_top_s"] = time.perf_counter() - t0
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated task counts")
    parser.add_argument("--annotated", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-scale"))
    parser.add_argument("--db-template", type=Path, default=None, help="migrated SQLite file")
    parser.add_argument(
        "--label-studio-bin", default=os.environ.get("ROBUSTAR_LS_LABEL_STUDIO_BIN")
    )
    parser.add_argument("--import-only", action="store_true", help="only import and rerun")
    parser.add_argument(
        "--no-fetch-before", action="store_true", help="skip the old full fetch (slow baseline)"
    )
    args = parser.parse_args()
    steps = frozenset(
        name for name, on in (("import-only", args.import_only),
                              ("no-fetch-before", args.no_fetch_before)) if on
    )  # fmt: skip
    sizes = [int(s) for s in args.sizes.split(",")]
    if not args.label_studio_bin:
        raise SystemExit("set ROBUSTAR_LS_LABEL_STUDIO_BIN or pass --label-studio-bin")
    load = os.getloadavg()[0]
    t_torch = timed_python("import torch, torchvision")
    t_help, _ = timed_cli(["--help"], dict(os.environ))
    print(json.dumps({"help_s": t_help, "import_torch_torchvision_s": t_torch, "load": load}))
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    with running_label_studio(
        args.label_studio_bin, args.workdir, db_template=args.db_template, timeout=600,
        personal_access_token=False,
    ) as server:  # fmt: skip
        env = {**os.environ, "LABEL_STUDIO_API_KEY": server.legacy_token}
        for n in sizes:
            rows.append(bench_size(server, n, args.annotated, env, steps))
    report(rows, t_help, t_torch, load, os.getloadavg()[0])


def report(rows, t_help: float, t_torch: float, load0: float, load1: float) -> None:
    print(f"\nload average {load0:.1f} at the start, {load1:.1f} at the end (2 cores)")
    print(f"--help: {t_help:.2f} s = {t_help / t_torch:.2f}x importing torch+torchvision")
    every = ["import_s", "rerun_s", "sync_dry_run_s", "fetch_annotated_s", "fetch_all_s"]
    keys = [k for k in [*every, "influence_top_s"] if all(k in row for row in rows)]
    print("tasks  " + "  ".join(keys))
    for row in rows:
        print(f"{row['tasks']:<6} " + "  ".join(f"{row[k]:.2f}".rjust(len(k)) for k in keys))
    for row in rows:
        if "fetch_all_s" not in row:
            continue
        print(
            f"{row['tasks']} tasks: import = {row['import_s'] / t_torch:.2f}x importing torch; "
            f"sync fetch = {row['fetch_annotated_s'] / row['fetch_all_s']:.3f}x the full fetch"
        )
    base = rows[0]
    for row in rows[1:]:
        ratio = {k: row[k] / base[k] for k in keys}
        print(
            f"{row['tasks']}/{base['tasks']} tasks: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items())
        )


if __name__ == "__main__":
    main()
