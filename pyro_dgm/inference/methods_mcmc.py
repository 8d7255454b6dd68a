"""``pyro-dgm compare`` entries for the MCMC kernels of :mod:`pyro_dgm.inference`.

Methods:

- ``mh``: :class:`~pyro_dgm.inference.RandomWalkMH`, at least 32 chains advancing as one
  batch (``chain_method="vectorized"``); models that do not broadcast over chains, or with
  discrete latent sites, fall back to Pyro's one-chain-per-process handling;
- ``gibbs``: :class:`~pyro_dgm.inference.Gibbs` (exact conditionals of discrete sites, MH
  within Gibbs for continuous ones), vectorized chains.

Model:

- ``mixture``: :class:`~pyro_dgm.models.GaussianMixture` with three components on 300
  synthetic points (equal weights, means -3, 0, 3, unit scales); the assignments are
  discrete, so compare it with ``--methods nuts,gibbs`` (NUTS sums them out).
"""

from __future__ import annotations

import warnings

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_dgm.compare.export import from_mcmc
from pyro_dgm.inference.gibbs import Gibbs
from pyro_dgm.inference.mcmc import MCMC
from pyro_dgm.inference.random_walk_mh import RandomWalkMH
from pyro_dgm.models.gaussian_mixture import GaussianMixture
from pyro_dgm.registry import Problem, Settings, register_method, register_model

__all__ = ["MIN_MH_CHAINS"]

#: vectorized chains cost little more than one: random-walk MH runs at least this many
MIN_MH_CHAINS = 32


def _run(kernel, problem: Problem, settings: Settings, num_chains: int):
    warmup = settings.num_warmup if settings.num_warmup is not None else settings.num_samples
    mcmc = MCMC(kernel, num_samples=settings.num_samples, warmup_steps=warmup,
                num_chains=num_chains, disable_progbar=not settings.progress,
                chain_method="vectorized")
    with warnings.catch_warnings():
        # a fallback to one chain per process says why; chains then may run one by one
        warnings.filterwarnings("ignore", message="chain_method='vectorized'")
        warnings.filterwarnings("ignore", message="num_chains=")
        mcmc.run(*problem.args, **problem.kwargs)
    return from_mcmc(mcmc)


def _has_discrete_latents(problem: Problem) -> bool:
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(problem.model).get_trace(*problem.args, **problem.kwargs)
    return any(site["type"] == "sample" and not site["is_observed"]
               and not site_is_subsample(site) and site["fn"].support.is_discrete
               for site in trace.nodes.values())


@register_method("mh", kind="mcmc", description="adaptive random-walk Metropolis-Hastings, "
                 f">= {MIN_MH_CHAINS} vectorized chains")
def run_mh(problem: Problem, settings: Settings):
    kernel = RandomWalkMH(problem.model, max_plate_nesting=problem.max_plate_nesting)
    # discrete sites are summed out one chain at a time (Pyro's chain handling)
    batch = problem.vectorizable and not _has_discrete_latents(problem)
    chains = max(settings.num_chains, MIN_MH_CHAINS) if batch else settings.num_chains
    return _run(kernel, problem, settings, chains)


@register_method("gibbs", kind="mcmc", description="Gibbs: exact discrete conditionals, "
                 "MH within Gibbs for continuous sites, vectorized chains")
def run_gibbs(problem: Problem, settings: Settings):
    kernel = Gibbs(problem.model, max_plate_nesting=problem.max_plate_nesting)
    return _run(kernel, problem, settings, settings.num_chains)


@register_model("mixture", description="1-D Gaussian mixture, 3 components, 300 synthetic "
                "points; discrete assignments (use --methods nuts,gibbs)")
def build_mixture(settings: Settings) -> Problem:
    model = GaussianMixture(3, dtype=settings.dtype).to(settings.device)
    data = model.simulate(300, locs=[-3.0, 0.0, 3.0], scales=[1.0, 1.0, 1.0],
                          seed=settings.seed)
    return Problem("mixture", model, (data.x,), var_names=["weights", "locs", "scales"],
                   description="1-D Gaussian mixture (K = 3, ordered means), 300 synthetic "
                   "points", max_plate_nesting=1)
