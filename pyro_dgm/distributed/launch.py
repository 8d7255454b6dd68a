"""Join the process group ``torchrun`` describes (gloo on CPU, NCCL on CUDA), and seeds.

See :mod:`pyro_dgm.distributed` for the overview and ``docs/distributed.md`` for commands.

Example::

    >>> ctx = setup_from_env()         # raises a one-line ValueError outside torchrun
    >>> pyro.set_rng_seed(rank_seed(0, ctx.rank))   # MCMC: distinct chains per process
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import pyro
import torch
import torch.distributed as dist

from pyro_dgm.defaults import DISTRIBUTED_TIMEOUT

__all__ = ["TORCHRUN_ENV", "DistributedContext", "rank_seed", "setup_from_env", "teardown",
           "world"]

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size``, its ``device`` and ``backend``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes files)."""
        return self.rank == 0


def setup_from_env(
    device: str | torch.device | None = None,
    *,
    num_data: int | None = None,
    timeout: float = DISTRIBUTED_TIMEOUT,
) -> DistributedContext:
    """Join the process group described by the ``torchrun`` environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; uses
    the NCCL backend on CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on CPU.
    Turns on ``pyro.settings.set(module_local_params=True)``: build model and guide after.

    :param device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
    :param num_data: the data set size; a world size larger than it is an error.
    :param timeout: seconds a collective may wait for the other processes (default
        :data:`pyro_dgm.defaults.DISTRIBUTED_TIMEOUT`; a frozen process is then reported
        within this time instead of torch's 300 s).
    :raises ValueError: outside a ``torchrun`` environment, or ``WORLD_SIZE > num_data``.
    """
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ValueError(
            f"--distributed needs a torchrun environment ({', '.join(missing)} not set): "
            "launch with `torchrun --nproc_per_node N -m pyro_dgm ...`")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if num_data is not None and world_size > num_data:
        raise ValueError(
            f"world size {world_size} is larger than the data set ({num_data} rows): every "
            "process needs at least one row")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but CUDA is not available")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    pyro.settings.set(module_local_params=True)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout))
    return DistributedContext(rank, world_size, local_rank, device, backend)


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_seed(seed: int, rank: int | None = None) -> int:
    """``seed + rank``: the seed of this process's MCMC chains (distinct chains per rank).

    For SVI use the *same* seed on every process instead, so that global latents are drawn
    identically and the averaged gradient is the full-batch one.
    """
    return int(seed) + (world()[0] if rank is None else int(rank))


def teardown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

