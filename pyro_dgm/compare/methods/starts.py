"""Where MCMC chains start: the best of several MAP fits, jittered per chain.

Example::

    >>> kernel = NUTS(problem.model, init_strategy=init_to_jittered(
    ...     map_start(problem, settings)))
"""

from __future__ import annotations

import math
import warnings
import weakref

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoLaplaceApproximation, init_to_median, init_to_sample
from pyro.util import get_rng_state, set_rng_state
from torch.distributions import biject_to

from pyro_dgm._validation import check_int
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.defaults import MAP_LBFGS_ITERATIONS, MAP_STARTS

__all__ = ["MAX_METRIC_DIM", "init_to_jittered", "jittered_starts", "laplace_inverse_mass",
           "map_start", "shared_map_start"]

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

    A start whose log density is not finite (or whose evaluation raises ``ValueError``) is
    skipped; L-BFGS runs guarded (:func:`_fit_map`): trial points of the line search where
    the density is not finite, or far worse than the start, make it back off. Unguarded,
    one far trial point poisoned a whole fit: on posteriordb's ``arma-arma11`` ``sigma``
    underflowed to 0 (``log sigma`` near -900), on ``bball_drive_event_0-hmm_drive_0`` the
    second emission rate overflowed to ``inf`` (its ordered increment ``exp(8.5)``), making
    the forward pass's initial logits NaN, and either raised out of ``map_start``.

    :raises ValueError: when no start reaches a finite log density.

    Example::

        >>> problem = MODELS.get("fa").build(settings)
        >>> kernel = NUTS(problem.model, init_strategy=init_to_jittered(
        ...     map_start(problem, settings)))
    """
    num_steps = check_int("num_steps", num_steps, minimum=1)
    num_starts = check_int("num_starts", num_starts, minimum=1)
    best, best_loss, rejected = None, math.inf, []
    for i in range(num_starts):
        with pyro.get_param_store().scope():  # a fresh store: every start is independent
            guide = AutoLaplaceApproximation(problem.model, init_loc_fn=init_to_median
                                             if i == 0 else init_to_sample)
            try:
                guide(*problem.args, **problem.kwargs)  # creates the parameters
                loss = _fit_map(problem, guide, num_steps)
            except ValueError as e:  # e.g. a start outside the density's domain
                loss = str(e).splitlines()[0] if str(e) else "ValueError"
            if isinstance(loss, str):
                rejected.append(f"start {i}: {loss}")
            elif loss < best_loss:  # the guide's draw is its point mass: the MAP
                best_loss = loss
                with torch.no_grad():
                    best = {k: v.detach() for k, v in guide(*problem.args,
                                                            **problem.kwargs).items()}
    if best is None:
        raise ValueError(f"map_start: no start reached a finite log density on "
                         f"{problem.name!r} ({'; '.join(rejected)})")
    return best


#: id(problem) -> (weak reference to the problem, its MAP point or None, the error or None)
_SHARED_MAPS: dict[int, tuple] = {}


def shared_map_start(problem: Problem, settings: Settings) -> dict:
    """:func:`map_start`'s point of ``problem``, fitted once per :class:`Problem` object and
    then reused: the methods of one comparison (``hmc``, ``nuts``, ``fullrank`` and the
    ``flow-*`` stages) share one problem, so the MAP is fitted once per run. The fit runs
    on a copy of the random state (the caller's stream is restored afterwards), so what a
    method draws next does not depend on whether another method fitted the MAP first. A
    failure (``NotImplementedError``, ``ValueError``) is remembered and raised again.

    Example::

        >>> guide = AutoMultivariateNormal(problem.model, init_loc_fn=init_to_value(
        ...     values=shared_map_start(problem, settings)))
    """
    entry = _SHARED_MAPS.get(id(problem))
    if entry is None or entry[0]() is not problem:
        device = torch.device(settings.device)
        state = get_rng_state()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                entry = (weakref.ref(problem), map_start(problem, settings), None)
        except (NotImplementedError, ValueError) as e:  # e.g. discrete latents: no MAP
            entry = (weakref.ref(problem), None, e)
        finally:
            set_rng_state(state)
        _SHARED_MAPS[id(problem)] = entry
        weakref.finalize(problem, _SHARED_MAPS.pop, id(problem), None)
    if entry[2] is not None:
        raise entry[2]
    return dict(entry[1])


def _fit_map(problem: Problem, guide: AutoLaplaceApproximation, num_steps: int) -> float | str:
    r"""Fit ``guide``'s point mass by guarded L-BFGS from where it stands; leave it at the
    lowest finite loss evaluated and return that loss (:math:`-\log p` at the point,
    Jacobian included), or why the start is skipped (its loss is not finite).

    The guard: while L-BFGS runs (Pyro's and torch's argument validation off), an
    evaluation whose loss or gradient is not finite, or that raises ``ValueError`` (a
    constrained value that left its support, e.g. ``exp`` underflowing to 0 or overflowing
    to ``inf`` at a far trial point of the line search), returns the finite penalty
    :math:`f_0 + |f_0| + 1` (:math:`f_0` the start's loss, above every point the search
    accepts) with a zero gradient; so does a finite loss above the penalty (a trial loss of
    :math:`10^{271}` on the HMM made the line search's cubic interpolation overflow into a
    NaN step). The strong-Wolfe search then brackets the step and backs off (its cubic
    step lands on the bracket's good end, clipped to 10% inside). The point kept is the
    best one evaluated, so a fit never ends worse than its start. The start itself is
    evaluated with validation as the caller has it.
    """
    params = list(guide.parameters())

    def loss_fn():
        return Trace_ELBO().differentiable_loss(problem.model, guide, *problem.args,
                                                **problem.kwargs)

    with torch.no_grad():
        start = float(loss_fn())
    if not math.isfinite(start):
        return f"loss {start} at the start"
    penalty = start + abs(start) + 1.0
    best = [start, [p.detach().clone() for p in params]]
    optim = torch.optim.LBFGS(params, lr=1.0, max_iter=num_steps, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        optim.zero_grad()
        try:
            with warnings.catch_warnings():  # a NaN here is expected: the guard handles it
                warnings.filterwarnings("ignore", message="Encountered (NaN|[+-]inf)")
                loss = loss_fn()
                loss.backward()
            value = float(loss.detach())  # the closure's value goes to the host anyway
        except ValueError:  # a value outside its support, found by a model's own check
            loss, value = None, math.nan
        grads_ok = loss is not None and all(
            p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        if not (value < penalty and grads_ok):  # NaN, inf, or worse than any accepted point
            for p in params:
                p.grad = torch.zeros_like(p)
            return params[0].new_tensor(penalty)
        if value < best[0]:
            best[0], best[1] = value, [p.detach().clone() for p in params]
        return loss

    with pyro.validation_enabled(False):
        optim.step(closure)
    with torch.no_grad():
        for p, b in zip(params, best[1], strict=True):
            p.copy_(b)
    return best[0]


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
    :func:`map_start` point already found (else :func:`shared_map_start`'s).

    Example::

        >>> init, how = jittered_starts(problem, settings, 64)
        >>> kernel.initial_params = init
    """
    try:
        point = shared_map_start(problem, settings) if point is None else point
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
