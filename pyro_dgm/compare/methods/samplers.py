"""``pyro-dgm compare`` entries for the MCMC kernels of :mod:`pyro_dgm.inference`.

Methods:

- ``mh``: :class:`~pyro_dgm.inference.RandomWalkMH`, at least 32 chains advancing as one
  batch (``chain_method="vectorized"``); models that do not broadcast over chains, or with
  discrete latent sites, fall back to Pyro's one-chain-per-process handling;
- ``gibbs``: :class:`~pyro_dgm.inference.Gibbs` (exact conditionals of discrete sites, MH
  within Gibbs for continuous ones), vectorized chains;
- ``hmc``: :class:`~pyro_dgm.inference.ChEESHMC`, :data:`HMC_CHAINS` chains in lockstep
  from jittered MAP starts (:func:`~pyro_dgm.compare.methods.starts.jittered_starts`; the
  prior median where no MAP can be fitted), dense mass matrix starting from the Laplace
  approximation's covariance at the MAP point
  (:func:`~pyro_dgm.compare.methods.starts.laplace_inverse_mass`) and the trajectory
  length :data:`LAPLACE_TRAJECTORY`, with its own run sizes
  (:func:`hmc_settings`). Every chain starts from the same MAP point (each with its own
  jitter), so the report's nested R-hat groups the chains into
  :data:`~pyro_dgm.defaults.NESTED_RHAT_SUPERCHAINS` superchains of consecutive chains (the
  export's ``num_superchains``): an arbitrary partition of exchangeable chains, which
  checks that many short chains agree (their warm-up forgot the jitter), not that distant
  starts were forgotten.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pyro import poutine
from pyro.infer.autoguide import init_to_median
from pyro.poutine.util import site_is_subsample

from pyro_dgm.compare._arviz import set_attrs
from pyro_dgm.compare.methods.fitting import run_vectorized
from pyro_dgm.compare.methods.starts import (
    jittered_starts,
    laplace_inverse_mass,
    shared_map_start,
)
from pyro_dgm.compare.registry import register_method
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.defaults import COMPARE_HMC_RUN, COMPARE_RUN, NESTED_RHAT_SUPERCHAINS
from pyro_dgm.inference.chees import ChEESHMC
from pyro_dgm.inference.gibbs import Gibbs
from pyro_dgm.inference.random_walk_mh import RandomWalkMH

__all__ = ["HMC_CHAINS", "LAPLACE_TRAJECTORY", "MIN_MH_CHAINS", "hmc_kernel", "hmc_settings"]

#: chains of the ``hmc`` method: cross-chain adaptation wants many
HMC_CHAINS = COMPARE_HMC_RUN["full"]["num_chains"]

#: starting trajectory length of ``hmc`` under a Laplace metric: in the metric's units the
#: posterior is about a standard Gaussian, whose ChEES criterion under uniform jitter,
#: :math:`\tfrac12 - \sin(2T)/(4T)`, peaks at :math:`\tan 2T = 2T`, :math:`T \approx 2.25`
LAPLACE_TRAJECTORY = 2.25

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


def hmc_settings(settings: Settings) -> Settings:
    """The ``hmc`` method's sizes: :data:`~pyro_dgm.defaults.COMPARE_HMC_RUN` of the run's
    mode where ``settings`` has that mode's default MCMC sizes
    (:data:`~pyro_dgm.defaults.COMPARE_RUN`), else ``settings`` as given."""
    mode = "quick" if settings.quick else "full"
    keys = ("num_chains", "num_warmup", "num_samples")
    if all(getattr(settings, k) == COMPARE_RUN[mode][k] for k in keys):
        return replace(settings, **COMPARE_HMC_RUN[mode])
    return settings


def hmc_kernel(problem: Problem, settings: Settings, chains: int) -> tuple[ChEESHMC, str]:
    """The ``hmc`` method's kernel for ``chains`` chains, and how its chains start: at the
    jittered MAP point under the Laplace metric with :data:`LAPLACE_TRAJECTORY` where a
    MAP (and a positive definite Hessian) exists, else at the prior median, identity metric.

    Example::

        >>> kernel, start = hmc_kernel(problem, settings, 64)
    """
    try:
        point = shared_map_start(problem, settings)
    except (NotImplementedError, ValueError):  # no MAP: jittered_starts says why
        point = None
    init, start = jittered_starts(problem, settings, chains, point=point)
    metric = laplace_inverse_mass(problem, point) if point is not None else None
    kernel = ChEESHMC(problem.model, init_strategy=init_to_median,
                      max_plate_nesting=problem.max_plate_nesting, inverse_mass_matrix=metric,
                      trajectory_length=LAPLACE_TRAJECTORY if metric is not None else None)
    if init is not None and problem.vectorizable:
        kernel.initial_params = init
    if metric is not None:
        start += ", Laplace metric"
    return kernel, start


@register_method("hmc", kind="mcmc", description=f"ChEES-HMC, {HMC_CHAINS} chains in lockstep "
                 "from jittered MAP starts")
def run_hmc(problem: Problem, settings: Settings):
    settings = hmc_settings(settings)
    chains = max(settings.num_chains, HMC_CHAINS) if problem.vectorizable else \
        settings.num_chains
    kernel, start = hmc_kernel(problem, settings, chains)
    idata = run_vectorized(kernel, problem, settings, chains)
    attrs = {"chain_start": start}
    if chains >= 2 * NESTED_RHAT_SUPERCHAINS and chains % NESTED_RHAT_SUPERCHAINS == 0:
        attrs["num_superchains"] = NESTED_RHAT_SUPERCHAINS
    set_attrs(idata, attrs)
    return idata
