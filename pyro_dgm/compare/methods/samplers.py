"""``pyro-dgm compare`` entries for the MCMC kernels of :mod:`pyro_dgm.inference`.

Methods:

- ``mh``: :class:`~pyro_dgm.inference.RandomWalkMH`, at least 32 chains advancing as one
  batch (``chain_method="vectorized"``); models that do not broadcast over chains, or with
  discrete latent sites, fall back to Pyro's one-chain-per-process handling;
- ``gibbs``: :class:`~pyro_dgm.inference.Gibbs` (exact conditionals of discrete sites, MH
  within Gibbs for continuous ones), vectorized chains.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_dgm.compare.methods.fitting import run_vectorized
from pyro_dgm.compare.registry import register_method
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.inference.gibbs import Gibbs
from pyro_dgm.inference.random_walk_mh import RandomWalkMH

__all__ = ["MIN_MH_CHAINS"]

#: vectorized chains cost little more than one: random-walk MH runs at least this many
MIN_MH_CHAINS = 32


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
    return run_vectorized(kernel, problem, settings, chains)


@register_method("gibbs", kind="mcmc", description="Gibbs: exact discrete conditionals, "
                 "MH within Gibbs for continuous sites, vectorized chains")
def run_gibbs(problem: Problem, settings: Settings):
    kernel = Gibbs(problem.model, max_plate_nesting=problem.max_plate_nesting)
    return run_vectorized(kernel, problem, settings, settings.num_chains)
