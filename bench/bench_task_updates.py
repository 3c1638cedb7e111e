"""How fast can task data be written into Label Studio? Prints ratios measured in one run.

Compares, on the same server and the same tasks: bulk import (``POST /api/projects/{id}/import``,
what ``import_tasks`` uses), per-task ``PATCH /api/tasks/{id}`` one at a time, and the same PATCHes
from a thread pool (what ``update_task_data`` does). Needs a running Label Studio:

    LABEL_STUDIO_API_KEY=... python bench/bench_task_updates.py --url http://localhost:8080 --n 300
"""

from __future__ import annotations

import os
import time
import uuid

from common import make_parser

from robustar_ls.labelstudio import client as ls


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, default=300, help="tasks (PATCH timings use n/3 each)")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    client = ls.connect(args.url, os.environ["LABEL_STUDIO_API_KEY"])
    config = '<View><Image name="image" value="$image"/><Header value="$summary"/></View>'
    project = ls.ensure_project(client, f"bench-updates-{uuid.uuid4().hex[:6]}", config)
    tasks = [
        {"image": f"/x/{i}.png", "relpath": f"c/{i:06d}.png", "summary": "", "influence": 0.0}
        for i in range(args.n)
    ]
    try:
        t0 = time.perf_counter()
        ls.import_tasks(client, project.id, tasks, batch_size=1000, existing={})
        t_import = (time.perf_counter() - t0) / args.n
        t0 = time.perf_counter()
        current = {t.id: t.data for t in ls.tasks_by_image(client, project.id).values()}
        t_list = (time.perf_counter() - t0) / args.n
        assert len(current) == args.n, f"paging lost tasks: {len(current)} of {args.n}"
        ids = sorted(current)
        third = args.n // 3
        seq = {i: {"influence": 1.0} for i in ids[:third]}
        par = {i: {"influence": 2.0} for i in ids[third : 2 * third]}
        t0 = time.perf_counter()
        ls.update_task_data(client, project.id, seq, current=current, workers=1)
        t_seq = (time.perf_counter() - t0) / len(seq)
        t0 = time.perf_counter()
        ls.update_task_data(client, project.id, par, current=current, workers=args.workers)
        t_par = (time.perf_counter() - t0) / len(par)
        print(f"tasks: {args.n}; per task: list = {t_list / t_import:.1f}x import")
        print(f"PATCH sequential = {t_seq / t_import:.0f}x bulk import per task")
        print(
            f"PATCH {args.workers} threads = {t_par / t_import:.0f}x bulk import per task "
            f"({t_seq / t_par:.1f}x faster than sequential)"
        )
    finally:
        client.projects.delete(project.id)


if __name__ == "__main__":
    main()
