"""DistributedDataParallel set-up when launched by ``torchrun`` (nothing happens at import).

``torchrun --nproc-per-node N --no-python robustar-ls sync-train …`` (or ``torchrun … -m
robustar_ls.cli sync-train …``) sets WORLD_SIZE, RANK and LOCAL_RANK; :func:`init_distributed`
reads them, starts the process group (NCCL on GPUs, Gloo on CPU) and picks this process's
device. Without those variables training runs in one process as usual.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from robustar_ls.models.zoo import default_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this context started the process group and must end it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env


def init_distributed(
    requested_device: str = "auto", environ: Mapping[str, str] | None = None
) -> DistContext:
    """Start the process group when launched by torchrun; otherwise a one-process context."""
    env = os.environ if environ is None else environ
    if not launched_by_torchrun(env):
        return DistContext(device=default_device(requested_device))
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", "0"))
    device = default_device(requested_device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("rank %d/%d on %s (%s)", rank, world, device, backend)
    return DistContext(
        rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns
    )


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor of statistics over processes (a no-op in one process)."""
    if not ctx.distributed:
        return values
    out = values.clone().to(ctx.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
