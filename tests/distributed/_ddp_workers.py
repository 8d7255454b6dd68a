"""Code the 2-process tests run in each process (spawned, gloo, file:// init, float64).

Each scenario returns a dict of tensors; the worker saves it to ``<out>/rank<r>.pt`` and the
test process asserts on the files. Single-process references are computed inside rank 0
from deep copies of the module taken right after DDP's initial broadcast.
"""

from __future__ import annotations

import copy
import math
import warnings

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroParam

from pyro_dgm._shared import data_plate
from pyro_dgm.distributed import (
    ShardedIndexLoader,
    distribute_objective,
    gather_chains,
    index_plates,
    rank_seed,
    reduce_mean,
)
from pyro_dgm.inference import compile_loss
from pyro_dgm.models.factor_analysis import FactorAnalysis

NUM_DATA = 8


def _grads(module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in module.named_parameters()
            if p.grad is not None}


def _flat_params(module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _all_gather(value: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(value) for _ in range(tdist.get_world_size())]
    tdist.all_gather(out, value)
    return torch.stack(out)


def _fa(marginalize: bool):
    fa = FactorAnalysis(3, 1, marginalize_latents=marginalize, dtype=torch.float64)
    x = fa.simulate(NUM_DATA, seed=0).x
    guide = AutoNormal(fa, create_plates=index_plates(NUM_DATA))
    return fa, guide, x


def _ddp_step(rank, world, marginalize, compiled=False):
    """One DDP step; the reference is the full batch (global latents) or per-shard runs
    (``compiled``: the DDP step runs ``compile_loss(Trace_ELBO())``, the references the
    ordinary objective)."""
    fa, guide, x = _fa(marginalize)
    pyro.set_rng_seed(0)
    loader = ShardedIndexLoader(NUM_DATA, NUM_DATA // world, seed=3)
    idx = next(iter(loader))
    ddp = distribute_objective(compile_loss(Trace_ELBO(), backend="fx") if compiled else
                               Trace_ELBO(), fa, guide, x, subsample=idx)
    initial = copy.deepcopy(ddp.module)
    initial.elbo = Trace_ELBO()  # the references: the ordinary objective
    pyro.set_rng_seed(1)
    loss = ddp(x, subsample=idx)
    loss.backward()
    out = {"grads": _grads(ddp.module), "loss": reduce_mean(loss)}
    if compiled:  # how many graphs ran, and no fallback
        elbo = ddp.module.elbo
        out["graphs"] = torch.tensor(-1 if elbo.fallbacks else elbo.num_traces)
    if rank == 0:
        if marginalize:  # the global batch is the whole data set
            ref = copy.deepcopy(initial)
            pyro.set_rng_seed(1)
            ref_loss = ref(x)
            ref_loss.backward()
            out["ref_grads"], out["ref_loss"] = _grads(ref), ref_loss.detach()
        else:  # the mean of the shards' single-process gradients
            shard_grads, shard_losses = [], []
            for shard in range(world):
                shard_idx = next(iter(ShardedIndexLoader(NUM_DATA, NUM_DATA // world, seed=3,
                                                         rank=shard, world_size=world)))
                ref = copy.deepcopy(initial)
                pyro.set_rng_seed(1)
                shard_loss = ref(x, subsample=shard_idx)
                shard_loss.backward()
                shard_grads.append(_grads(ref))
                shard_losses.append(shard_loss.detach())
            out["ref_grads"] = {k: sum(g[k] for g in shard_grads) / world
                                for k in shard_grads[0]}
            out["ref_loss"] = sum(shard_losses) / world
    optim = torch.optim.Adam(ddp.parameters(), lr=0.05)
    optim.step()
    out["params_all_ranks"] = _all_gather(_flat_params(ddp.module))
    out["params_changed"] = (_flat_params(ddp.module) - _flat_params(initial)).abs().max()
    return out


class NormalMean(PyroModule):
    """theta ~ N(0, 1), x_n ~ N(theta, 1): one global latent, exact evidence."""

    def forward(self, x, subsample=None):
        theta = pyro.sample("theta", dist.Normal(x.new_zeros(()), x.new_ones(())))
        with data_plate(x, subsample=subsample) as batch:
            pyro.sample("x", dist.Normal(theta, 1.0), obs=batch)


class ExactNormalGuide(PyroModule):
    """q(theta) = the exact posterior N(sum x / (N+1), 1 / (N+1))."""

    def __init__(self, x):
        super().__init__()
        n = x.shape[0]
        self.loc = PyroParam(x.sum() / (n + 1))
        self.scale = PyroParam(x.new_tensor(1.0 / math.sqrt(n + 1)),
                               constraint=dist.constraints.positive)

    def forward(self, x, subsample=None):
        pyro.sample("theta", dist.Normal(self.loc, self.scale))


def exact_log_evidence(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    cov = torch.eye(n, dtype=x.dtype) + 1.0
    return dist.MultivariateNormal(x.new_zeros(n), cov).log_prob(x)


def _iwae_global(rank, world):
    """IWAE(K) of a global latent with the exact posterior guide, sharded over 2 ranks."""
    try:
        from pyro_dgm.inference import IWAE
    except ImportError:  # the objectives are not installed in this checkout
        return {"unavailable": torch.tensor(True)}
    x = torch.linspace(-1.0, 2.0, NUM_DATA, dtype=torch.float64)
    idx = next(iter(ShardedIndexLoader(NUM_DATA, NUM_DATA // world, seed=5)))
    out = {"log_evidence": exact_log_evidence(x)}
    for k in (1, 8):
        model, guide = NormalMean(), ExactNormalGuide(x)
        objective = IWAE(num_particles=k, max_plate_nesting=1)
        pyro.set_rng_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ddp = distribute_objective(objective, model, guide, x, subsample=idx)
            sharded = []
            for seed in range(20):
                pyro.set_rng_seed(seed)  # the same seed on every rank: shared particles
                sharded.append(reduce_mean(-ddp(x, subsample=idx)))
        out[f"warned_{k}"] = torch.tensor(any("biased" in str(w.message) for w in caught))
        out[f"sharded_{k}"] = torch.stack(sharded)
        full = []
        for seed in range(20):
            pyro.set_rng_seed(seed)
            full.append(-objective.differentiable_loss(model, guide, x).detach())
        out[f"full_{k}"] = torch.stack(full)
    return out


def _chains(rank, world):
    """Each rank runs one HMC chain with seed 0 + rank; gather along ``chain``."""
    x = torch.tensor([0.3, -0.5, 1.2, 0.8], dtype=torch.float64)
    pyro.set_rng_seed(rank_seed(0))
    kernel = pyro.infer.HMC(NormalMean(), step_size=0.3, num_steps=4, adapt_step_size=False)
    mcmc = pyro.infer.MCMC(kernel, num_samples=40, warmup_steps=10, disable_progbar=True)
    mcmc.run(x)
    merged = gather_chains(mcmc)
    return {"own": mcmc.get_samples()["theta"].reshape(-1),
            "merged": torch.as_tensor(merged.posterior["theta"].values),
            "merged_ll": torch.as_tensor(merged.log_likelihood["x"].values),
            "observed": torch.as_tensor(merged.observed_data["x"].values)}


SCENARIOS = {
    "global": lambda r, w: _ddp_step(r, w, marginalize=True),
    "local": lambda r, w: _ddp_step(r, w, marginalize=False),
    "global_compiled": lambda r, w: _ddp_step(r, w, marginalize=True, compiled=True),
    "local_compiled": lambda r, w: _ddp_step(r, w, marginalize=False, compiled=True),
    "iwae_global": _iwae_global,
    "chains": _chains,
}


def run(rank: int, world: int, init_file: str, out_dir: str, names: list[str]) -> None:
    """Entry point of :func:`torch.multiprocessing.spawn`."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(True)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world)
    try:
        results = {}
        for name in names:
            pyro.clear_param_store()
            pyro.settings.set(module_local_params=True)
            results[name] = SCENARIOS[name](rank, world)
            tdist.barrier()
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        tdist.destroy_process_group()
