"""Built-in inference methods of ``pyro-dgm compare``: Pyro's NUTS and autoguides.

- ``nuts``: :class:`pyro.infer.NUTS` under :class:`pyro.infer.MCMC` (the usual reference),
  every chain started near the MAP point (:func:`map_start`);
- ``meanfield``: :class:`~pyro.infer.autoguide.AutoNormal` (ADVI, mean-field Gaussian);
- ``fullrank``: :class:`~pyro.infer.autoguide.AutoMultivariateNormal` (full-rank ADVI),
  its mean started at the MAP point;
- ``laplace``: :class:`~pyro.infer.autoguide.AutoLaplaceApproximation` (MAP, then a
  Gaussian with the inverse Hessian of the negative log joint as covariance).

The VI methods optimize with :func:`~pyro_dgm.compare.methods.fitting.fit_svi`; NUTS starts
its chains, and ``fullrank`` its mean, at the MAP point of
:func:`~pyro_dgm.compare.methods.starts.shared_map_start` (fitted once per comparison).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from pyro.infer import MCMC, NUTS, Trace_ELBO
from pyro.infer.autoguide import (
    AutoLaplaceApproximation,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_median,
    init_to_value,
)
from pyro.util import get_rng_state, set_rng_state

from pyro_dgm.compare._arviz import set_attrs
from pyro_dgm.compare.export import from_mcmc
from pyro_dgm.compare.methods.fitting import export_guide, fit_svi
from pyro_dgm.compare.methods.starts import (
    MAX_METRIC_DIM,
    init_to_jittered,
    laplace_inverse_mass,
    shared_map_start,
)
from pyro_dgm.compare.registry import register_method
from pyro_dgm.compare.settings import Problem, Settings, num_warmup

__all__ = ["fit_fullrank", "fullrank_start"]


@register_method("nuts", kind="mcmc", description="Pyro NUTS (reference), chains from the MAP")
def run_nuts(problem: Problem, settings: Settings):
    try:
        strategy, start = init_to_jittered(shared_map_start(problem, settings)), "MAP + jitter 0.1"
    except (NotImplementedError, ValueError) as e:  # e.g. discrete latents: no AutoDelta
        strategy = init_to_median(num_samples=15)
        start = f"prior median (no MAP start: {type(e).__name__}: {e})"
    kernel = NUTS(problem.model, jit_compile=problem.jit_compile,
                  ignore_jit_warnings=True, init_strategy=strategy)
    with warnings.catch_warnings():
        # chains run one after another when there are fewer free cores than chains
        warnings.filterwarnings("ignore", message="num_chains=")
        # Pyro's jit_compile uses torch.jit.trace, deprecated in torch >= 2.10 but working
        warnings.filterwarnings("ignore", message=".*torch.jit.trace", category=DeprecationWarning)
        mcmc = MCMC(kernel, num_samples=settings.num_samples, warmup_steps=num_warmup(settings),
                    num_chains=settings.num_chains, disable_progbar=not settings.progress)
        mcmc.run(*problem.args, **problem.kwargs)
    idata = from_mcmc(mcmc)
    set_attrs(idata, {"chain_start": start})
    return idata


@register_method("meanfield", kind="vi", description="AutoNormal: mean-field Gaussian ADVI")
def run_meanfield(problem: Problem, settings: Settings):
    guide = AutoNormal(problem.model, init_loc_fn=init_to_median, init_scale=0.05)
    steps = len(fit_svi(problem, guide, settings, desc="meanfield"))
    return export_guide(problem, guide, settings, {"svi_steps": steps})


def fullrank_start(problem: Problem, settings: Settings) -> tuple[Callable, str]:
    """Where full-rank ADVI starts its mean: ``(init_loc_fn, description)``, the MAP point
    of :func:`~pyro_dgm.compare.methods.starts.shared_map_start` where one is found and is
    a proper mode (the Hessian of the negative log density there positive definite), else
    the prior median (as before the MAP start, e.g. for models with discrete latents).

    From the prior median full-rank ADVI can converge to a wrong local optimum: on the
    default ``fa`` job two of five seeds ended at mean W1 2.49 and 2.45 reference sds,
    0.079 and 0.076 from the MAP; on posteriordb's ``arma-arma11`` and the basketball HMM
    it ended hundreds of reference sds off. A MAP whose Hessian is not positive definite is
    no centre for a Gaussian: on ``mcycle_gp-accel_gp`` (a funnel) the MAP sits in the
    funnel's neck, and full-rank ADVI from it ended 58.7 reference sds off (min sd ratio
    0.003) against 6.3 (0.055) from the prior median. The check costs one backward pass per
    coordinate and is skipped above :data:`~pyro_dgm.compare.methods.starts.MAX_METRIC_DIM`
    coordinates.

    Example::

        >>> init_loc_fn, start = fullrank_start(problem, settings)
        >>> guide = AutoMultivariateNormal(problem.model, init_loc_fn=init_loc_fn)
    """
    try:
        point = shared_map_start(problem, settings)
    except (NotImplementedError, ValueError) as e:  # e.g. discrete latents: no MAP
        return init_to_median, f"prior median (no MAP start: {type(e).__name__}: {e})"
    dim = sum(v.numel() for v in point.values())  # >= the unconstrained size
    if dim <= MAX_METRIC_DIM:
        state = get_rng_state()  # the check traces the model: leave the draws alone
        try:
            proper = laplace_inverse_mass(problem, point) is not None
        finally:
            set_rng_state(state)
        if not proper:
            return init_to_median, "prior median (the MAP's Hessian is not positive definite)"
    return init_to_value(values=point, fallback=init_to_median), "MAP"


def fit_fullrank(problem: Problem, settings: Settings,
                 desc: str = "fullrank") -> tuple[AutoMultivariateNormal, int]:
    """Full-rank ADVI as the ``fullrank`` method fits it: the fitted guide and its steps
    (the ``flow-*`` methods start from it). The mean starts at the MAP point
    (:func:`fullrank_start`; the guide's ``start`` attribute says which), the Cholesky
    factor at ``0.05 I``."""
    init_loc_fn, start = fullrank_start(problem, settings)
    guide = AutoMultivariateNormal(problem.model, init_loc_fn=init_loc_fn, init_scale=0.05)
    guide.start = start
    steps = len(fit_svi(problem, guide, settings, desc=desc))
    return guide, steps


@register_method("fullrank", kind="vi",
                 description="AutoMultivariateNormal: full-rank Gaussian ADVI from the MAP")
def run_fullrank(problem: Problem, settings: Settings):
    guide, steps = fit_fullrank(problem, settings)
    return export_guide(problem, guide, settings, {"svi_steps": steps, "svi_start": guide.start})


@register_method("laplace", kind="vi",
                 description="AutoLaplaceApproximation: MAP + inverse-Hessian Gaussian")
def run_laplace(problem: Problem, settings: Settings):
    guide = AutoLaplaceApproximation(problem.model, init_loc_fn=init_to_median)
    steps = len(fit_svi(problem, guide, settings, loss=Trace_ELBO(), desc="laplace"))
    laplace = guide.laplace_approximation(*problem.args, **problem.kwargs)
    return export_guide(problem, laplace, settings, {"svi_steps": steps})
