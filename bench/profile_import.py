"""Where `robustar-ls import` spends its time: each step against a real Label Studio, timed,
for a first import of N images and the rerun on the unchanged project.

    PYTHONPATH=. python bench/profile_import.py --n 1000 \\
        --label-studio-bin .venv-ls/bin/label-studio --workdir /tmp/profile-import
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

t_start = time.perf_counter()
from robustar_ls.config import ImportConfig, LabelStudioConfig  # noqa: E402
from robustar_ls.labelstudio import client as ls  # noqa: E402
from robustar_ls.labelstudio import project_import  # noqa: E402

T_MODULES = time.perf_counter() - t_start  # what the command imports (no torch)

from common import make_parser, tiny_image_folder  # noqa: E402

from robustar_ls.workflows.label_studio import running_label_studio  # noqa: E402

STEPS = {
    ls: (
        "ensure_project",
        "ensure_local_storage",
        "tasks_by_split",
        "import_tasks",
        "ensure_views",
    ),
    project_import: ("build_tasks", "refresh_links"),
}


def time_steps(spent: dict[str, float]) -> None:
    """Wrap each step so that its seconds add up in ``spent``."""
    for module, names in STEPS.items():
        for name in names:
            step = getattr(module, name)

            def timed(*args, _step=step, _name=name, **kwargs):
                t0 = time.perf_counter()
                try:
                    return _step(*args, **kwargs)
                finally:
                    spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t0

            setattr(module, name, timed)


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/profile-import"))
    parser.add_argument("--db-template", type=Path, default=None)
    parser.add_argument(
        "--label-studio-bin", default=os.environ.get("ROBUSTAR_LS_LABEL_STUDIO_BIN")
    )
    args = parser.parse_args()
    spent: dict[str, float] = {}
    time_steps(spent)
    with running_label_studio(
        args.label_studio_bin, args.workdir, db_template=args.db_template, timeout=600,
        personal_access_token=False,
    ) as server:  # fmt: skip
        data = tiny_image_folder(server.document_root / "profile", args.n)
        print(json.dumps({"modules_s": round(T_MODULES, 2), "load": os.getloadavg()[0]}))
        ls_cfg = LabelStudioConfig(
            server.url, server.legacy_token, "profile", str(server.document_root)
        )
        for run in ("import", "rerun"):
            spent.clear()
            t0 = time.perf_counter()
            client = ls.connect(server.url, server.legacy_token)
            spent["connect"] = time.perf_counter() - t0
            project_import.import_project(client, ls_cfg, ImportConfig(data=str(data)))
            total = time.perf_counter() - t0
            steps = {k: round(v, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
            print(json.dumps({"run": run, "total_s": round(total, 2), **steps}), flush=True)


if __name__ == "__main__":
    main()
