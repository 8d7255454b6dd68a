r"""Data-parallel SVI and multi-process MCMC chains on :mod:`torch.distributed`.

**SVI.** Any objective's ``differentiable_loss`` module (``objective(model, guide)``, an
:class:`~pyro.infer.elbo.ELBOModule`) trains under
:class:`torch.nn.parallel.DistributedDataParallel` (the engine Lightning, Fabric and Ray
Train drive) once three things hold:

1. parameters live on the modules, not in Pyro's global param store
   (``pyro.settings.set(module_local_params=True)`` *before* the modules are built);
2. lazily created guide parameters (autoguides) exist before wrapping, so one call on a
   batch comes first (DDP broadcasts rank 0's values and registers its gradient hooks on
   the parameters it sees at construction);
3. every process sees a different shard of each global batch, handed to model and guide as
   *indices* for ``pyro.plate("data", N, subsample=idx)`` (a plate that draws its own
   subsample would draw the same indices on every process).

With :math:`S` processes, shard :math:`s` of batch size :math:`B` is scaled by
:math:`N/B`, so its loss :math:`\hat L_s` is an unbiased estimate of the full-data loss, and
DDP's gradient all-reduce takes the mean,

.. math::

    \nabla \frac1S \sum_{s=1}^S \hat L_s ,

which for a model with only global latents and the same random draws on every process
(the same seed) is exactly the gradient of a single process on the global batch of size
:math:`SB`. :func:`distribute_objective` does 1 and 2, :class:`ShardedIndexLoader` does 3,
:func:`reduce_mean` averages the loss for logging. Multi-sample bounds whose log-sum-exp
spans the whole data set (IWAE with a global latent) are *not* linear in the shards; see
``docs/distributed.md`` for their bias.

**MCMC.** Each process runs its own chains with seed ``seed + rank``
(:func:`rank_seed`); :func:`gather_chains` collects the ``InferenceData`` of every process and
concatenates it along ArviZ's ``chain`` dimension.

Example (launched with ``torchrun --nproc_per_node 2 script.py``)::

    >>> ctx = setup_from_env()                        # gloo on CPU, NCCL on CUDA
    >>> loader = ShardedIndexLoader(len(x), batch_size=64, seed=0)
    >>> pyro.set_rng_seed(0)
    >>> loss_module = distribute_objective(Trace_ELBO(), model, guide,
    ...                                    x, subsample=next(iter(loader)))
    >>> optim = torch.optim.Adam(loss_module.parameters(), lr=1e-3)
    >>> for epoch in range(10):
    ...     loader.set_epoch(epoch)
    ...     for idx in loader:
    ...         optim.zero_grad()
    ...         loss = loss_module(x, subsample=idx)
    ...         loss.backward()
    ...         optim.step()
    ...     print(float(reduce_mean(loss.detach())))
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import pyro
import torch
import torch.distributed as dist
from pyro.infer import ELBO
from torch.nn.parallel import DistributedDataParallel

from pyro_dgm._validation import check_int

__all__ = [
    "DistributedContext",
    "ShardedIndexLoader",
    "distribute_objective",
    "gather_chains",
    "index_plates",
    "merge_chains",
    "rank_seed",
    "reduce_mean",
    "setup_from_env",
    "shard_permutation",
    "teardown",
    "training_hooks",
    "wrap_module",
]

#: Environment variables ``torchrun`` sets for every process.
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
    timeout: float = 300.0,
) -> DistributedContext:
    """Join the process group described by the ``torchrun`` environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; uses
    the NCCL backend on CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on CPU.
    Turns on ``pyro.settings.set(module_local_params=True)``: build model and guide after.

    :param device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
    :param num_data: the data set size; a world size larger than it is an error.
    :param timeout: seconds a collective may wait for the other processes.
    :raises ValueError: outside a ``torchrun`` environment, or ``WORLD_SIZE > num_data``.
    """
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ValueError(
            f"--distributed needs a torchrun environment ({', '.join(missing)} not set): "
            "launch with `torchrun --nproc_per_node N -m pyro_dgm ...`")
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


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_seed(seed: int, rank: int | None = None) -> int:
    """``seed + rank``: the seed of this process's MCMC chains (distinct chains per rank).

    For SVI use the *same* seed on every process instead, so that global latents are drawn
    identically and the averaged gradient is the full-batch one.
    """
    return int(seed) + (_world()[0] if rank is None else int(rank))


def shard_permutation(perm: torch.Tensor, batch_size: int, *, rank: int,
                      world_size: int) -> list[torch.Tensor]:
    """This rank's index batches of one epoch's permutation ``perm`` (see the loader).

    Global batch ``b`` is ``perm[b G:(b+1) G]``, ``G = batch_size * world_size``, and rank
    ``r`` takes its ``r``-th block; the last partial global batch is dropped.
    """
    g = batch_size * world_size
    return [perm[step * g + rank * batch_size:step * g + (rank + 1) * batch_size]
            for step in range(len(perm) // g)]


class ShardedIndexLoader:
    r"""Index batches for ``pyro.plate(..., subsample=idx)``, sharded over processes.

    Each epoch draws one permutation of ``range(num_data)`` from ``seed + epoch`` (the same
    on every process); global batch ``b`` is ``perm[b G:(b+1) G]`` with
    ``G = batch_size * world_size``, and rank ``r`` gets its ``r``-th block of
    ``batch_size`` indices. So the union over processes of one step is exactly the batch a
    single process with ``batch_size * world_size`` and the same seed would see. Every
    process yields the same number of batches (``num_data // G``, the last partial global
    batch is dropped), which DDP needs.

    :param num_data: data set size :math:`N`.
    :param batch_size: indices per process and step.
    :param rank, world_size: default to the initialised process group (else ``0, 1``).
    :param seed: seed of the permutations; ``shuffle=False`` keeps ``0..N-1`` in order.
    :param device: device of the yielded ``long`` tensors.
    :raises ValueError: ``world_size > num_data`` or ``batch_size * world_size > num_data``.
    """

    def __init__(self, num_data: int, batch_size: int, *, rank: int | None = None,
                 world_size: int | None = None, seed: int = 0, shuffle: bool = True,
                 device: str | torch.device | None = None):
        default_rank, default_world = _world()
        self.num_data = check_int("num_data", num_data, minimum=1)
        self.world_size = check_int("world_size", default_world if world_size is None
                                    else world_size, minimum=1)
        self.rank = check_int("rank", default_rank if rank is None else rank, minimum=0,
                              maximum=self.world_size - 1)
        if self.world_size > self.num_data:
            raise ValueError(
                f"world size {self.world_size} is larger than the data set "
                f"({self.num_data} rows): every process needs at least one row")
        self.batch_size = check_int("batch_size", batch_size, minimum=1,
                                    maximum=self.num_data // self.world_size)
        self.seed, self.shuffle, self.epoch = int(seed), bool(shuffle), 0
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @property
    def global_batch_size(self) -> int:
        """Indices per step over all processes."""
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` (call before iterating, as with DDP samplers)."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def __len__(self) -> int:
        return self.num_data // self.global_batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.num_data, generator=generator)
        else:
            perm = torch.arange(self.num_data)
        yield from shard_permutation(perm.to(self.device), self.batch_size, rank=self.rank,
                                     world_size=self.world_size)


def index_plates(num_data: int, name: str = "data", dim: int | None = None):
    """``create_plates`` for autoguides: the guide's plate takes the loader's indices.

    An autoguide otherwise rebuilds a subsampled plate with ``subsample_size`` only and
    draws its *own* random indices, so its local latents would belong to other rows than
    the model's. Use ``AutoNormal(model, create_plates=index_plates(N))``; model and guide
    must be called with the keyword ``subsample=idx``.
    """
    num_data = check_int("num_data", num_data, minimum=1)

    def create_plates(*args, subsample: torch.Tensor | None = None, **kwargs) -> pyro.plate:
        return pyro.plate(name, num_data, subsample=subsample, dim=dim)

    return create_plates


def distribute_objective(
    objective: ELBO,
    model: torch.nn.Module,
    guide: torch.nn.Module,
    *args,
    device_ids: Sequence[int] | None = None,
    **kwargs,
) -> DistributedDataParallel:
    """Wrap ``objective(model, guide)`` in :class:`DistributedDataParallel`.

    Checks that ``module_local_params`` was on when model and guide were built, runs the
    loss once on ``(*args, **kwargs)`` (a
    representative batch) so that lazily created guide parameters exist, then wraps. The
    returned module's ``forward(*args, **kwargs)`` is ``objective.differentiable_loss``; its
    gradients are averaged over the processes in ``backward``.

    :param objective: an :class:`~pyro.infer.ELBO` with ``differentiable_loss``
        (``Trace_ELBO``, :class:`~pyro_dgm.inference.IWAE`, ...).
    :param model: the model, an ``nn.Module`` (``PyroModule``).
    :param guide: the guide, an ``nn.Module`` (autoguide or ``PyroModule``).
    :param device_ids: ``[local_rank]`` on CUDA, ``None`` on CPU.
    :raises ValueError: no process group, a non-module model/guide, or no parameters.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("no torch.distributed process group: call setup_from_env() (or "
                         "torch.distributed.init_process_group) first")
    if not isinstance(objective, ELBO):
        raise ValueError(f"objective must be a pyro.infer.ELBO, got {type(objective).__name__}")
    for name, value in (("model", model), ("guide", guide)):
        if not isinstance(value, torch.nn.Module):
            raise ValueError(f"{name} must be a torch.nn.Module (PyroModule / autoguide) to "
                             f"carry its parameters, got {type(value).__name__}")
    _check_module_local(model, guide)
    module = objective(model, guide)
    module(*args, **kwargs)  # creates lazy guide parameters; the value is discarded
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError("model and guide have no trainable parameters to distribute")
    return DistributedDataParallel(module, device_ids=device_ids)


def _check_module_local(*modules: torch.nn.Module) -> None:
    """PyroModules choose global or module-local parameters when they are *constructed*."""
    message = ("turn on pyro.settings.set(module_local_params=True) before constructing "
               "the model and guide (setup_from_env does), so that their parameters live "
               "on the modules where DDP sees them")
    if not pyro.settings.get("module_local_params"):
        raise ValueError(message)
    for module in modules:
        for sub in module.modules():
            context = sub.__dict__.get("_pyro_context")
            if context is not None and not hasattr(context, "param_state"):
                raise ValueError(f"{type(sub).__name__} was built without module-local "
                                 f"parameters: {message}")


def wrap_module(module: torch.nn.Module, ctx: DistributedContext | None = None
                ) -> DistributedDataParallel:
    """Wrap an ``ELBOModule`` whose parameters all exist in DDP (on ``ctx.device``)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("no torch.distributed process group: call setup_from_env() first")
    _check_module_local(module)
    cuda = ctx is not None and ctx.device.type == "cuda"
    return DistributedDataParallel(module, device_ids=[ctx.local_rank] if cuda else None)


def training_hooks(batch_size: int, num_data: int,
                   device: str | torch.device | None = None) -> tuple[DistributedContext, dict]:
    """Join the ``torchrun`` group and build the hooks of :func:`pyro_dgm.training.dlgm.train`.

    ``batch_size`` is the *total* over processes (as in a single-process run), split evenly;
    each epoch's permutation comes from the loop's generator (the same on every process) and
    is sharded by :func:`shard_permutation`, so one step covers exactly the rows a single
    process would use (the last partial batch is dropped).

    :returns: ``(ctx, {"index_batches", "wrap_loss", "is_main_process"})``.
    :raises ValueError: no ``torchrun`` environment, more processes than rows, or a
        ``batch_size`` that the world size does not divide.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    ctx = setup_from_env(device, num_data=num_data)
    if batch_size % ctx.world_size:
        teardown()
        raise ValueError(f"--batch-size {batch_size} is not divisible by the world size "
                         f"{ctx.world_size}: it is the total batch over all processes")
    per_rank = batch_size // ctx.world_size

    def index_batches(epoch: int, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        perm = torch.randperm(n, generator=generator)
        return shard_permutation(perm, per_rank, rank=ctx.rank, world_size=ctx.world_size)

    hooks = {"index_batches": index_batches, "wrap_loss": lambda m: wrap_module(m, ctx),
             "is_main_process": ctx.is_main}
    return ctx, hooks


def teardown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a (detached) tensor over all processes, for logging; identity without a group.

    The mean of the per-shard losses is the loss estimate for the global batch.
    """
    value = value.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / dist.get_world_size()
    return value


def merge_chains(parts: Sequence):
    """Concatenate ``InferenceData`` objects along ``chain`` (renumbered ``0..C-1``).

    Groups without a ``chain`` dimension (``observed_data``, ``constant_data``) are taken
    from the first part. All parts must have the same variables and number of draws.

    :raises ValueError: no parts, or parts whose groups or draws differ.
    """
    import xarray as xr

    from pyro_dgm.compare._arviz import arviz, group_names

    parts = list(parts)
    if not parts:
        raise ValueError("parts is empty: nothing to merge")
    names = group_names(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if group_names(part) != names:
            raise ValueError(f"parts[{i}] has groups {group_names(part)}, parts[0] {names}")
    groups = {}
    for name in names:
        first = parts[0][name]
        if "chain" not in first.dims:
            groups[name] = first
            continue
        pieces, start = [], 0
        for part in parts:
            ds = part[name]
            if ds.sizes.get("draw") != first.sizes.get("draw"):
                raise ValueError(f"group {name!r}: parts have different numbers of draws")
            n = ds.sizes["chain"]
            pieces.append(ds.assign_coords(chain=list(range(start, start + n))))
            start += n
        groups[name] = xr.concat(pieces, dim="chain", combine_attrs="override")
    return arviz.InferenceData(**groups)


def gather_chains(idata, *, group=None):
    """Collect every process's chains into one ``InferenceData`` on every process.

    :param idata: this process's ``InferenceData``, or a finished :class:`pyro.infer.MCMC`
        (converted with :func:`pyro_dgm.compare.from_mcmc`).
    :param group: a ``torch.distributed`` process group (default: the world).
    :returns: chains of rank 0 first, then rank 1, ...; without a process group, ``idata``.

    Run each process's chains with ``pyro.set_rng_seed(rank_seed(seed))`` so they differ.
    """
    if isinstance(idata, pyro.infer.MCMC):
        from pyro_dgm.compare import from_mcmc

        idata = from_mcmc(idata)
    if not (dist.is_available() and dist.is_initialized()):
        return idata
    parts = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, idata, group=group)
    return merge_chains(parts)
