"""What the comparison's methods share: fitting a guide by SVI, exporting its draws, and
running a vectorized MCMC kernel.

Example::

    >>> guide = AutoNormal(problem.model)
    >>> losses = fit_svi(problem, guide, settings)
    >>> idata = export_guide(problem, guide, settings)
"""

from __future__ import annotations

import warnings

import pyro
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from pyro_dgm._validation import check_int
from pyro_dgm.compare.export import from_guide, from_mcmc
from pyro_dgm.compare.settings import Problem, Settings, num_warmup
from pyro_dgm.inference.mcmc import MCMC

__all__ = ["export_guide", "fit_svi", "run_vectorized", "vi_draws"]


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
    num_steps = check_int("num_steps", num_steps or settings.num_steps, minimum=1)
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


def export_guide(problem: Problem, guide, settings: Settings, attrs: dict | None = None):
    """:func:`~pyro_dgm.compare.from_guide` of ``guide`` with :func:`vi_draws` draws."""
    return from_guide(problem.model, guide, *problem.args, num_samples=vi_draws(settings),
                      attrs=attrs, **problem.kwargs)


def run_vectorized(kernel, problem: Problem, settings: Settings, num_chains: int):
    """Run ``kernel`` under :class:`pyro_dgm.inference.MCMC` with vectorized chains (Pyro's
    one chain per process where the model does not broadcast) and export the draws."""
    mcmc = MCMC(kernel, num_samples=settings.num_samples, warmup_steps=num_warmup(settings),
                num_chains=num_chains, disable_progbar=not settings.progress,
                chain_method="vectorized")
    with warnings.catch_warnings():
        # a fallback to one chain per process says why; chains then may run one by one
        warnings.filterwarnings("ignore", message="chain_method='vectorized'")
        warnings.filterwarnings("ignore", message="num_chains=")
        mcmc.run(*problem.args, **problem.kwargs)
    return from_mcmc(mcmc)
