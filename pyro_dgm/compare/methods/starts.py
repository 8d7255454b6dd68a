"""Where MCMC chains start: the best of several MAP fits, jittered per chain.

Example::

    >>> kernel = NUTS(problem.model, init_strategy=init_to_jittered(
    ...     map_start(problem, settings)))
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoLaplaceApproximation, init_to_median, init_to_sample
from torch.distributions import biject_to

from pyro_dgm._validation import check_int
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.defaults import MAP_LBFGS_ITERATIONS, MAP_STARTS

__all__ = ["MAX_METRIC_DIM", "init_to_jittered", "jittered_starts", "laplace_inverse_mass",
           "map_start"]

#: :func:`laplace_inverse_mass` skips posteriors with more unconstrained coordinates (its
#: Hessian costs one backward pass per coordinate)
MAX_METRIC_DIM = 1000


def map_start(problem: Problem, settings: Settings, num_steps: int = MAP_LBFGS_ITERATIONS,
              num_starts: int = MAP_STARTS) -> dict:
    """The best MAP point of ``problem``'s density in unconstrained space (what NUTS
    samples) found from ``num_starts`` starts (the prior median, then prior draws), as
    ``{site: constrained value}``. Each start fits the point mass of an
    :class:`~pyro.infer.autoguide.AutoLaplaceApproximation` (unconstrained space, Jacobian
    included) by L-BFGS with a strong-Wolfe line search, at most ``num_steps``
    (:data:`pyro_dgm.defaults.MAP_LBFGS_ITERATIONS`) iterations; the loss is deterministic,
    and on the default job each start converges in 50-80 evaluations.

    Chains started from random prior draws can settle in minor modes they never leave: on
    the default job (factor analysis of the wine data, 4 chains) two of four NUTS chains
    from ``init_to_median`` sat 70 nats of log density below the others, with the second
    factor's leading loading pinned at zero (R-hat 1.73). A MAP in *constrained* space
    (``AutoDelta``) ends at that boundary too: the half-normal prior of the loading peaks at
    zero, which the unconstrained density's Jacobian term cancels. From the prior median
    and three prior draws, one of the four fits on that job ends in the minor mode
    (negative log density 2874.28 against 2801.22), hence several starts.

    Example::

        >>> problem = MODELS.get("fa").build(settings)
        >>> kernel = NUTS(problem.model, init_strategy=init_to_jittered(
        ...     map_start(problem, settings)))
    """
    num_steps = check_int("num_steps", num_steps, minimum=1)
    best, best_loss = None, math.inf
    for i in range(check_int("num_starts", num_starts, minimum=1)):
        with pyro.get_param_store().scope():  # a fresh store: every start is independent
            guide = AutoLaplaceApproximation(problem.model, init_loc_fn=init_to_median
                                             if i == 0 else init_to_sample)
            guide(*problem.args, **problem.kwargs)  # creates the parameters
            optim = torch.optim.LBFGS(list(guide.parameters()), lr=1.0, max_iter=num_steps,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-7,
                                      tolerance_change=1e-10)

            def closure(guide=guide, optim=optim):
                optim.zero_grad()
                loss = Trace_ELBO().differentiable_loss(problem.model, guide, *problem.args,
                                                        **problem.kwargs)
                loss.backward()
                return loss

            optim.step(closure)
            with torch.no_grad():  # - log density at the point, Jacobian included
                loss = Trace_ELBO().loss(problem.model, guide, *problem.args,
                                         **problem.kwargs)
                if loss < best_loss:  # the guide's draw is its point mass: the MAP
                    best_loss = loss
                    best = {k: v.detach() for k, v in guide(*problem.args,
                                                            **problem.kwargs).items()}
    if best is None:
        raise ValueError("map_start: no start reached a finite log density")
    return best


def init_to_jittered(values: dict, scale: float = 0.1):
    r"""An init strategy: ``values[site]`` moved by :math:`\mathcal N(0, scale^2)` noise in
    the site's unconstrained space (a fresh draw for every chain), the prior median for
    sites not in ``values``. With :math:`T` the bijection onto the site's support,
    :math:`x_0 = T(T^{-1}(v) + \epsilon)`, :math:`\epsilon \sim \mathcal N(0, scale^2 I)`
    (the "jitter" start of Stan and PyMC, around a given point).

    Example::

        >>> NUTS(model, init_strategy=init_to_jittered({"sigma": torch.tensor(0.5)}))
    """

    def strategy(site):
        value = values.get(site["name"])
        if value is None:
            return init_to_median(site)
        transform = torch.distributions.biject_to(site["fn"].support)
        free = transform.inv(value)
        return transform(free + scale * torch.randn_like(free))

    return strategy


def jittered_starts(problem: Problem, settings: Settings, chains: int,
                    scale: float = 0.1, point: dict | None = None) -> tuple[dict | None, str]:
    r"""Unconstrained initial values ``(chains, ...)`` for a vectorized kernel's
    ``initial_params``: the :func:`map_start` point plus :math:`\mathcal N(0, scale^2)`
    noise per chain (as :func:`init_to_jittered`), or ``None`` (the kernel's prior-median
    start) where no MAP can be fitted; and a description of the start. ``point``: a
    :func:`map_start` point already found (else it is fitted here).

    Example::

        >>> init, how = jittered_starts(problem, settings, 64)
        >>> kernel.initial_params = init
    """
    try:
        point = map_start(problem, settings) if point is None else point
    except (NotImplementedError, ValueError) as e:  # e.g. discrete latents: no MAP
        return None, f"prior median (no MAP start: {e})"
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(problem.model).get_trace(*problem.args, **problem.kwargs)
    init = {}
    for name, value in point.items():
        free = biject_to(trace.nodes[name]["fn"].support).inv(value)
        init[name] = free + scale * torch.randn((chains,) + free.shape, dtype=free.dtype,
                                                device=free.device)
    return init, f"MAP + jitter {scale}"


def laplace_inverse_mass(problem: Problem, point: dict) -> torch.Tensor | None:
    r"""The Laplace approximation's covariance at ``point`` (a :func:`map_start` point):
    :math:`H^{-1}`, :math:`H` the Hessian of :math:`U(u) = -\log p(x, T(u)) - \log\lvert
    \det J_T(u)\rvert` in unconstrained space, over the coordinates of the sites in sorted
    name order, each flattened (the layout of
    :class:`~pyro_dgm.inference.ChEESHMC`'s ``inverse_mass_matrix``); ``None`` where
    :math:`H` is not positive definite, not finite, or has more than
    :data:`MAX_METRIC_DIM` coordinates. A mass matrix from it lets HMC start with steps
    on the posterior's scale rather than the identity's (on the default job the narrowest
    direction is ~30x narrower than the widest, so the identity metric's first step sizes
    are ~0.03 against ~0.5 after adaptation).

    Example::

        >>> kernel = ChEESHMC(model, inverse_mass_matrix=laplace_inverse_mass(problem, point))
    """
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(problem.model).get_trace(*problem.args, **problem.kwargs)
    names = sorted(point)
    transforms = {n: biject_to(trace.nodes[n]["fn"].support) for n in names}
    free = {n: transforms[n].inv(point[n]).detach() for n in names}
    flat = torch.cat([free[n].reshape(-1) for n in names])
    if flat.numel() > MAX_METRIC_DIM:
        return None

    def potential(z: torch.Tensor) -> torch.Tensor:
        values, ladj, pos = {}, 0.0, 0
        for n in names:
            u = z[pos:pos + free[n].numel()].reshape(free[n].shape)
            pos += free[n].numel()
            values[n] = transforms[n](u)
            ladj = ladj + transforms[n].log_abs_det_jacobian(u, values[n]).sum()
        with poutine.block():
            tr = poutine.trace(poutine.condition(problem.model, data=values)).get_trace(
                *problem.args, **problem.kwargs)
        return -(tr.log_prob_sum() + ladj)

    hessian = torch.autograd.functional.hessian(potential, flat)
    hessian = 0.5 * (hessian + hessian.mT)
    chol, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        return None
    return torch.cholesky_inverse(chol)
