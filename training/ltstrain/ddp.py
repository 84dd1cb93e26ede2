"""torch.distributed helpers: one process per device, started by ``torchrun`` or by
:func:`spawn` (tests: two CPU processes on the gloo backend). Only rank 0 writes files."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, ...).

    A single process (no WORLD_SIZE, or 1) runs without a process group. Backend: nccl when
    CUDA is available, gloo otherwise (``LTS_DIST_BACKEND`` overrides)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = backend or os.environ.get("LTS_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def sync_codebooks(model: torch.nn.Module, info: DistInfo) -> None:
    """Broadcast rank 0's codebook tensors to all ranks.

    The codebook changes some parameters outside the optimiser (data initialisation at the
    first forward, re-seeding of dead codes from the current batch); each rank would do it
    from its own batch. Broadcasting these small tensors after every step keeps the replicas
    identical (gradients are already averaged by DDP)."""
    if not info.enabled:
        return
    for m in model.modules():
        if hasattr(m, "embedding") and hasattr(m, "usage_ema"):
            for t in list(m.parameters(recurse=True)) + list(m.buffers(recurse=True)):
                dist.broadcast(t.data, src=0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LTS_DIST_BACKEND": os.environ.get("LTS_DIST_BACKEND", "gloo"),
        }
    )
    torch.set_num_threads(1)
    fn(*args)


def spawn(fn: Callable, nprocs: int, args: tuple = ()) -> None:
    """Run ``fn(*args)`` in ``nprocs`` processes forming one process group (like torchrun)."""
    import torch.multiprocessing as mp

    mp.spawn(_spawn_entry, args=(nprocs, free_port(), fn, args), nprocs=nprocs, join=True)
