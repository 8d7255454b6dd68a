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
from pyro_dgm.defaults import SVI_TOLERANCE, SVI_WINDOW
from pyro_dgm.inference.compiled import CompiledELBO, compile_loss
from pyro_dgm.inference.mcmc import MCMC, VectorizedKernel

__all__ = ["converged", "export_guide", "fit_svi", "run_vectorized", "vi_draws"]


def vi_draws(settings: Settings) -> int:
    """Guide draws exported per VI method: as many as MCMC keeps over all chains."""
    return settings.num_samples * max(settings.num_chains, 1)


def converged(losses: list[float], window: int, tol: float) -> bool:
    """The convergence rule of :func:`fit_svi`: at least ``2 * window`` losses, and the mean
    of the last ``window`` differs from the mean of the ``window`` before by at most
    ``tol`` relative to its magnitude, ``|m_1 - m_0| <= tol * max(|m_1|, 1)``."""
    if window < 1 or len(losses) < 2 * window:
        return False
    last = sum(losses[-window:]) / window
    before = sum(losses[-2 * window:-window]) / window
    return abs(last - before) <= tol * max(abs(last), 1.0)


def _cool_down(svi, losses: list[float], problem: Problem, final_lr: float,
                steps: int) -> None:
    """``steps`` more steps with the rate decayed geometrically to ``final_lr`` (where the
    full schedule would have ended), so an early stop does not keep Adam's noise at a
    high rate."""
    for opt in svi.optim.optim_objs.values():
        for group in opt.param_groups:
            group["lrd"] = (final_lr / group["lr"]) ** (1.0 / steps)
    for _ in range(steps):
        losses.append(svi.step(*problem.args, **problem.kwargs))


def fit_svi(
    problem: Problem,
    guide,
    settings: Settings,
    *,
    loss=None,
    lr: float = 0.02,
    num_steps: int | None = None,
    window: int | None = None,
    tol: float | None = None,
    cooldown: bool = True,
    desc: str = "SVI",
    compile: bool = True,
) -> list[float]:
    """Optimize ``guide`` for ``problem`` with Adam, decaying the rate 10x over the step cap.

    Without an explicit ``num_steps`` the run stops early by a convergence rule
    (:func:`converged`): every ``window`` steps, once ``2 * window`` losses exist, it stops
    when the mean loss of the last ``window`` steps changed by at most ``tol`` (relative)
    against the ``window`` before; ``settings.num_steps`` is the cap. Defaults
    :data:`pyro_dgm.defaults.SVI_WINDOW` and :data:`pyro_dgm.defaults.SVI_TOLERANCE`. With
    ``cooldown`` (default) a stop is followed by one more window (within the cap) whose rate
    decays geometrically to where the full schedule ends (a tenth of ``lr``): stopping at a
    high rate keeps Adam's noise in the fit (on the default job, without the cool-down, the
    mean-field table's mean abs std error against NUTS went from 0.062 to 0.171). An
    explicit ``num_steps`` runs exactly that many steps unless ``tol`` is given too.

    :param loss: a :class:`pyro.infer.ELBO`; default ``Trace_ELBO`` with 4 particles
        (vectorized when the problem allows it).
    :param window: steps per smoothing window; ``tol``: relative tolerance (``0`` turns the
        rule off); ``cooldown``: decay the rate over one more window after a stop.
    :param compile: run the steps through :func:`~pyro_dgm.inference.compile_loss` (the
        same draws and gradients; where its guards fail it warns once and runs the
        ordinary step).
    :return: the loss of every step taken (its length is the number of steps).
    """
    explicit = num_steps is not None
    num_steps = check_int("num_steps", num_steps or settings.num_steps, minimum=1)
    if tol is None:
        tol = 0.0 if explicit else SVI_TOLERANCE
    window = check_int("window", SVI_WINDOW if window is None else window, minimum=1)
    if not tol >= 0.0:
        raise ValueError(f"tol: must be >= 0, got {tol!r}")
    if loss is None:
        loss = Trace_ELBO(num_particles=4, vectorize_particles=problem.vectorizable,
                          max_plate_nesting=problem.max_plate_nesting)
    if compile and not isinstance(loss, CompiledELBO):
        loss = compile_loss(loss)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1.0 / num_steps)})
    svi = SVI(problem.model, guide, optim, loss)
    losses = []
    bar = tqdm(range(num_steps), desc=desc, disable=not settings.progress, leave=False)
    for step in bar:
        losses.append(svi.step(*problem.args, **problem.kwargs))
        if step % 100 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if tol > 0 and (step + 1) % window == 0 and converged(losses, window, tol):
            if cooldown and num_steps > len(losses):
                _cool_down(svi, losses, problem, lr * 0.1, min(window, num_steps - len(losses)))
            break
    bar.close()
    return losses


def export_guide(problem: Problem, guide, settings: Settings, attrs: dict | None = None):
    """:func:`~pyro_dgm.compare.from_guide` of ``guide`` with :func:`vi_draws` draws."""
    return from_guide(problem.model, guide, *problem.args, num_samples=vi_draws(settings),
                      attrs=attrs, **problem.kwargs)


def run_vectorized(kernel, problem: Problem, settings: Settings, num_chains: int,
                   compile: bool = True):
    """Run ``kernel`` under :class:`pyro_dgm.inference.MCMC` with vectorized chains (Pyro's
    one chain per process where the model does not broadcast) and export the draws.

    :param compile: evaluate the batched potential as a captured graph
        (:attr:`~pyro_dgm.inference.VectorizedKernel.compile_potential`; the same values,
        one warning and the ordinary potential where its guards fail)."""
    if compile and isinstance(kernel, VectorizedKernel):
        kernel.compile_potential = True
    mcmc = MCMC(kernel, num_samples=settings.num_samples, warmup_steps=num_warmup(settings),
                num_chains=num_chains, disable_progbar=not settings.progress,
                chain_method="vectorized")
    with warnings.catch_warnings():
        # a fallback to one chain per process says why; chains then may run one by one
        warnings.filterwarnings("ignore", message="chain_method='vectorized'")
        warnings.filterwarnings("ignore", message="num_chains=")
        mcmc.run(*problem.args, **problem.kwargs)
    return from_mcmc(mcmc)
