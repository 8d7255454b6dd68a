"""Built-in inference methods of ``pyro-dgm compare``: Pyro's NUTS and autoguides.

- ``nuts``: :class:`pyro.infer.NUTS` under :class:`pyro.infer.MCMC` (the usual reference);
- ``meanfield``: :class:`~pyro.infer.autoguide.AutoNormal` (ADVI, mean-field Gaussian);
- ``fullrank``: :class:`~pyro.infer.autoguide.AutoMultivariateNormal` (full-rank ADVI);
- ``laplace``: :class:`~pyro.infer.autoguide.AutoLaplaceApproximation` (MAP, then a
  Gaussian with the inverse Hessian of the negative log joint as covariance).

All VI methods optimize with :func:`fit_svi`, which other modules reuse for their guides
and objectives.
"""

from __future__ import annotations

import warnings

import pyro
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoLaplaceApproximation,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_median,
)
from tqdm.auto import tqdm

from pyro_dgm.compare.export import from_guide, from_mcmc
from pyro_dgm.registry import Problem, Settings, register_method

__all__ = ["default_num_steps", "fit_svi", "vi_draws"]


def default_num_steps(settings: Settings) -> int:
    """SVI steps: ``settings.num_steps``, else 1,500 (quick) or 5,000."""
    return settings.num_steps or (1500 if settings.quick else 5000)


def vi_draws(settings: Settings) -> int:
    """Guide draws exported per VI method: as many as MCMC keeps over all chains."""
    return settings.num_samples * max(settings.num_chains, 1)


def fit_svi(
    problem: Problem,
    guide,
    settings: Settings,
    *,
    loss=None,
    lr: float = 0.02,
    num_steps: int | None = None,
    desc: str = "SVI",
) -> list[float]:
    """Optimize ``guide`` for ``problem`` with Adam, decaying the rate 10x over the run.

    :param loss: a :class:`pyro.infer.ELBO`; default ``Trace_ELBO`` with 4 particles
        (vectorized when the problem allows it).
    :return: the loss of every step.
    """
    num_steps = num_steps or default_num_steps(settings)
    if loss is None:
        loss = Trace_ELBO(num_particles=4, vectorize_particles=problem.vectorizable,
                          max_plate_nesting=problem.max_plate_nesting)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1.0 / num_steps)})
    svi = SVI(problem.model, guide, optim, loss)
    losses = []
    bar = tqdm(range(num_steps), desc=desc, disable=not settings.progress, leave=False)
    for step in bar:
        losses.append(svi.step(*problem.args, **problem.kwargs))
        if step % 100 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
    return losses


def _export_guide(problem: Problem, guide, settings: Settings):
    return from_guide(problem.model, guide, *problem.args, num_samples=vi_draws(settings),
                      **problem.kwargs)


@register_method("nuts", kind="mcmc", description="Pyro NUTS (reference)")
def run_nuts(problem: Problem, settings: Settings):
    kernel = NUTS(problem.model, jit_compile=problem.jit_compile,
                  ignore_jit_warnings=True, init_strategy=init_to_median(num_samples=15))
    warmup = settings.num_warmup if settings.num_warmup is not None else settings.num_samples
    with warnings.catch_warnings():
        # chains run one after another when there are fewer free cores than chains
        warnings.filterwarnings("ignore", message="num_chains=")
        # Pyro's jit_compile uses torch.jit.trace, deprecated in torch >= 2.10 but working
        warnings.filterwarnings("ignore", message=".*torch.jit.trace", category=DeprecationWarning)
        mcmc = MCMC(kernel, num_samples=settings.num_samples, warmup_steps=warmup,
                    num_chains=settings.num_chains, disable_progbar=not settings.progress)
        mcmc.run(*problem.args, **problem.kwargs)
    return from_mcmc(mcmc)


@register_method("meanfield", kind="vi", description="AutoNormal: mean-field Gaussian ADVI")
def run_meanfield(problem: Problem, settings: Settings):
    guide = AutoNormal(problem.model, init_loc_fn=init_to_median, init_scale=0.05)
    fit_svi(problem, guide, settings, desc="meanfield")
    return _export_guide(problem, guide, settings)


@register_method("fullrank", kind="vi",
                 description="AutoMultivariateNormal: full-rank Gaussian ADVI")
def run_fullrank(problem: Problem, settings: Settings):
    guide = AutoMultivariateNormal(problem.model, init_loc_fn=init_to_median, init_scale=0.05)
    fit_svi(problem, guide, settings, desc="fullrank")
    return _export_guide(problem, guide, settings)


@register_method("laplace", kind="vi",
                 description="AutoLaplaceApproximation: MAP + inverse-Hessian Gaussian")
def run_laplace(problem: Problem, settings: Settings):
    guide = AutoLaplaceApproximation(problem.model, init_loc_fn=init_to_median)
    fit_svi(problem, guide, settings, loss=Trace_ELBO(), desc="laplace")
    laplace = guide.laplace_approximation(*problem.args, **problem.kwargs)
    return _export_guide(problem, laplace, settings)
