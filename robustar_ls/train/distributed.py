"""DistributedDataParallel set-up when launched by ``torchrun`` (nothing happens at import).

:func:`init_distributed` takes this process's :class:`~robustar_ls.train.torchrun.Launch`
(the torchrun environment, read in :mod:`robustar_ls.train.torchrun` only), starts the process
group (NCCL on GPUs, Gloo on CPU) and picks this process's device. A workflow starts it once,
at its entry (:func:`robustar_ls.train.torchrun.process_group`). Without torchrun training
runs in one process as usual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from robustar_ls.models.zoo import default_device

if TYPE_CHECKING:  # torchrun.process_group imports this module: no import back at run time
    from robustar_ls.train.torchrun import Launch

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


def init_distributed(requested_device: str, here: Launch) -> DistContext:
    """Start the process group when launched by torchrun (``here``: this process's
    :func:`~robustar_ls.train.torchrun.launch`); otherwise a one-process context."""
    if not here.by_torchrun:
        return DistContext(device=default_device(requested_device))
    rank, world, local_rank = here.rank, here.world_size, here.local_rank
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
