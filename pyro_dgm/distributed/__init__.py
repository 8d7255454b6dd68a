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
   subsample would draw the same indices on every process; autoguides need
   ``create_plates=index_plates(N)``, see :func:`index_plates`).

With :math:`S` processes, shard :math:`s` of batch size :math:`B` is scaled by
:math:`N/B`, so its loss :math:`\hat L_s` is an unbiased estimate of the full-data loss, and
DDP's gradient all-reduce takes the mean,

.. math::

    \nabla \frac1S \sum_{s=1}^S \hat L_s ,

which for a model with only global latents and the same random draws on every process
(the same seed) is exactly the gradient of a single process on the global batch of size
:math:`SB`. :func:`distribute_objective` does 1 and 2, :class:`ShardedIndexLoader` does 3,
:func:`reduce_mean` averages the loss for logging; :class:`DDPStrategy` does all of it for
:func:`pyro_dgm.dlgm.train` (``pyro-dgm train --distributed``). Multi-sample bounds whose
log-sum-exp spans the whole data set (IWAE with a global latent) are *not* linear in the
shards; see ``docs/distributed.md`` for their bias.

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

(``model`` and ``guide`` built after :func:`setup_from_env`, an autoguide with
``create_plates=index_plates(len(x))``.)
"""

from pyro_dgm.distributed.chains import gather_chains, merge_chains
from pyro_dgm.distributed.ddp import (
    DDPStrategy,
    ShardedIndexLoader,
    distribute_objective,
    index_plates,
    reduce_mean,
    shard_permutation,
    wrap_module,
)
from pyro_dgm.distributed.launch import (
    TORCHRUN_ENV,
    DistributedContext,
    rank_seed,
    setup_from_env,
    teardown,
)
from pyro_dgm.distributed.watch import Heartbeat, StuckRankError

__all__ = [
    "TORCHRUN_ENV",
    "DDPStrategy",
    "DistributedContext",
    "Heartbeat",
    "ShardedIndexLoader",
    "StuckRankError",
    "distribute_objective",
    "gather_chains",
    "index_plates",
    "merge_chains",
    "rank_seed",
    "reduce_mean",
    "setup_from_env",
    "shard_permutation",
    "teardown",
    "wrap_module",
]
