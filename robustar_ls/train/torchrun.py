"""The ``torchrun`` launch: its environment is read here and nowhere else, and a workflow's
process group is started here (:func:`process_group`), once, at the workflow's entry.

``torchrun --nproc-per-node N --no-python robustar-ls sync-train …`` (or ``torchrun … -m
robustar_ls.cli …``) gives each process its rank, the number of processes and its local rank
in the environment. Reading them imports no torch: a one-process run (a sync dry run, a
``--help``) never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: torch only under torchrun
    from robustar_ls.train.distributed import DistContext


@dataclass(frozen=True)
class Launch:
    """This process as torchrun launched it: rank 0 of 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    by_torchrun: bool = False  # several processes, each told its rank

    @property
    def is_main(self) -> bool:
        """The process that reports, locks and writes (rank 0)."""
        return self.rank == 0


def launch(environ: Mapping[str, str] | None = None) -> Launch:
    """This process's :class:`Launch`, from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Launch(
        rank=int(env.get("RANK", "0")),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        by_torchrun=world > 1 and "RANK" in env,
    )


@contextmanager
def process_group(device: str = "auto", here: Launch | None = None) -> Iterator[DistContext | None]:
    """Under torchrun (``here``, default :func:`launch`): this process's place in the started
    process group (Gloo on CPU, NCCL on GPUs), ended on exit; in one plain process: None, and
    torch is not imported."""
    here = launch() if here is None else here
    if not here.by_torchrun:
        yield None
        return
    from robustar_ls.train.distributed import init_distributed, shutdown

    ctx = init_distributed(device, here)
    try:
        yield ctx
    finally:
        shutdown(ctx)
