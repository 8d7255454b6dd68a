r"""DistributedDataParallel for any objective's ``differentiable_loss`` module.

Index loaders sharded by rank for ``pyro.plate(..., subsample=idx)``, the DDP wrapper that
creates lazy guide parameters first, the training strategy of ``pyro-dgm train
--distributed`` (:class:`DDPStrategy`) and the mean-reduced loss for logging. With
:math:`S` processes the gradient is :math:`\nabla \frac1S\sum_s \hat L_s` (see
:mod:`pyro_dgm.distributed`).

Example::

    >>> loader = ShardedIndexLoader(len(x), batch_size=64, seed=0)
    >>> loss_module = distribute_objective(Trace_ELBO(), model, guide, x,
    ...                                    subsample=next(iter(loader)))
    >>> loss = loss_module(x, subsample=idx); loss.backward()   # gradients averaged
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pyro
import torch
import torch.distributed as dist
from pyro.infer import ELBO
from torch.nn.parallel import DistributedDataParallel

from pyro_dgm._validation import check_int
from pyro_dgm.defaults import DISTRIBUTED_TIMEOUT
from pyro_dgm.distributed.launch import DistributedContext, setup_from_env, teardown, world
from pyro_dgm.distributed.watch import Heartbeat, StuckRankError, is_timeout
from pyro_dgm.dlgm.strategy import Strategy

__all__ = ["DDPStrategy", "ShardedIndexLoader", "distribute_objective", "index_plates",
           "reduce_mean", "shard_permutation", "wrap_module"]


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
        default_rank, default_world = world()
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


class DDPStrategy(Strategy):
    """Data-parallel training for :func:`pyro_dgm.dlgm.train` over the ``torchrun`` processes.

    :meth:`start` joins the process group (gloo on CPU, NCCL on CUDA, one GPU per process)
    and splits the config's ``batch_size`` — the *total* over processes, as in a
    single-process run — evenly. Each epoch's permutation comes from the loop's generator
    (the same on every process) and is sharded by :func:`shard_permutation`, so one step
    covers exactly the rows a single process would use (the last partial batch is
    dropped). The loss module is wrapped in ``DistributedDataParallel``
    (:func:`wrap_module`), the logged loss is the mean over processes
    (:func:`reduce_mean`), only rank 0 writes files, and :meth:`close` leaves the group.

    A process that freezes makes the others stop after ``timeout`` seconds with a
    :class:`~pyro_dgm.distributed.watch.StuckRankError` naming it (each rank records its
    step in the group's store, :class:`~pyro_dgm.distributed.watch.Heartbeat`).

    :param timeout: seconds a collective waits for the other processes (default
        :data:`pyro_dgm.defaults.DISTRIBUTED_TIMEOUT`).

    Example (in a script started by ``torchrun --nproc_per_node 2``)::

        >>> result = train(TrainConfig(epochs=10), "runs/ddp", strategy=DDPStrategy())
        >>> result.is_main                      # True on rank 0 only
    """

    def __init__(self, timeout: float = DISTRIBUTED_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = float(timeout)
        self.ctx: DistributedContext | None = None
        self.per_rank: int | None = None
        self.heartbeat: Heartbeat | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (before :meth:`start`: the ``RANK`` of the environment)."""
        if self.ctx is not None:
            return self.ctx.is_main
        return int(os.environ.get("RANK", "0")) == 0

    def start(self, *, device: str, batch_size: int, num_data: int) -> str:
        """Join the group; returns this process's device (``cuda:<local rank>`` on CUDA).

        :raises ValueError: no ``torchrun`` environment, more processes than rows, or a
            ``batch_size`` that the world size does not divide.
        """
        batch_size = check_int("batch_size", batch_size, minimum=1)
        try:
            self.ctx = setup_from_env(device or None, num_data=num_data,
                                      timeout=self.timeout)
        except RuntimeError as e:
            if not is_timeout(e):
                raise
            raise StuckRankError(
                f"rank {os.environ.get('RANK', '?')}: the other processes did not join "
                f"within {self.timeout:g} s (raise --timeout if they are only slow)") from e
        self.heartbeat = Heartbeat(self.ctx.rank, self.ctx.world_size, self.timeout)
        if batch_size % self.ctx.world_size:
            teardown()
            raise ValueError(f"--batch-size {batch_size} is not divisible by the world size "
                             f"{self.ctx.world_size}: it is the total batch over all "
                             "processes")
        self.per_rank = batch_size // self.ctx.world_size
        return str(self.ctx.device)

    def _context(self) -> DistributedContext:
        if self.ctx is None:
            raise ValueError("DDPStrategy: call start() first (train does)")
        return self.ctx

    def index_batches(self, epoch: int, num_data: int,
                      generator: torch.Generator) -> Iterator[torch.Tensor]:
        """This rank's shard of each global batch of the epoch's permutation (each step is
        recorded in the heartbeat before it is handed out)."""
        ctx = self._context()
        perm = torch.randperm(num_data, generator=generator)
        batches = shard_permutation(perm, self.per_rank, rank=ctx.rank,
                                    world_size=ctx.world_size)
        for step, idx in enumerate(batches):
            self.heartbeat.beat(epoch, step)
            yield idx

    def explain(self, error: Exception) -> Exception:
        """A timed-out collective becomes a :class:`StuckRankError` naming the stuck rank."""
        return error if self.heartbeat is None else self.heartbeat.explain(error)

    def wrap(self, loss_module: torch.nn.Module) -> DistributedDataParallel:
        """``loss_module`` in ``DistributedDataParallel`` (gradients averaged)."""
        return wrap_module(loss_module, self._context())

    def reduce(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the processes."""
        return reduce_mean(value)

    def close(self) -> None:
        """Leave the process group."""
        teardown()


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a (detached) tensor over all processes, for logging; identity without a group.

    The mean of the per-shard losses is the loss estimate for the global batch.
    """
    value = value.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / dist.get_world_size()
    return value

