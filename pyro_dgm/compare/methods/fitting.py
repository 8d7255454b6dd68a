"""What the comparison's methods share: fitting a guide by SVI (with a guard against steps
that blow up), exporting its draws, and running a vectorized MCMC kernel.

Example::

    >>> guide = AutoNormal(problem.model)
    >>> losses = fit_svi(problem, guide, settings)
    >>> idata = export_guide(problem, guide, settings)
"""

from __future__ import annotations

import contextlib
import math
import statistics
import warnings
from collections import deque

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from pyro_dgm._validation import check_int, check_positive
from pyro_dgm.compare.export import from_guide, from_mcmc
from pyro_dgm.compare.settings import Problem, Settings, num_warmup
from pyro_dgm.defaults import SVI_TOLERANCE, SVI_WINDOW
from pyro_dgm.inference.compiled import CompiledELBO, CompileFallbackWarning, compile_loss
from pyro_dgm.inference.mcmc import MCMC, VectorizedKernel

__all__ = ["SVILosses", "StepGuard", "converged", "export_guide", "fit_svi",
           "run_vectorized", "vi_draws"]


class SVILosses(list):
    """The losses of the steps :func:`fit_svi` accepted (its length is their number), with
    :attr:`rejected`, the number of steps its :class:`StepGuard` rejected."""

    rejected: int = 0


def _copy_state(state: dict) -> dict:
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}


class StepGuard:
    r"""Rejects an SVI step whose loss is not finite or jumps far above its recent level.

    ``svi.step`` returns the loss at the parameters *before* its update, so a bad update
    shows in the next step's loss. The guard keeps a copy of the parameters (and of the
    optimizer's moments) at the last accepted loss; a rejected step restores that copy and
    multiplies every rate by ``backoff``, so the step is retried, smaller, with new draws.

    A step is rejected when its loss is ``nan``/``inf``, or when it exceeds the median of
    the last ``window`` accepted losses by more than ``jump`` times their spread
    (:math:`1.4826\,\mathrm{MAD}`, at least :math:`10^{-3}\max(|\text{median}|, 1)`). The
    jump is how a sudden blow-up of the guide's variance shows: widening a coordinate's sd
    :math:`k`-fold past the posterior's costs about :math:`(k^2 - 1)/2` nats of expected log
    density and gains only :math:`\log k` of entropy. A jump rejected three times in a row
    from the same parameters is a change of level, not a blow-up, and is accepted.

    :param svi: the :class:`pyro.infer.SVI` whose steps are guarded; its parameters must
        exist (run one ``svi.evaluate_loss`` first).
    :raises FloatingPointError: when more than ``max_rejections`` steps in a row are
        rejected (the loss stays non-finite even with ever smaller steps); an
        ``ArithmeticError``, so the comparison reports that method's failure and goes on.
    """

    def __init__(self, svi: SVI, *, window: int = 50, jump: float = 20.0,
                 backoff: float = 0.5, max_rejections: int = 20):
        self.svi = svi
        self.jump = check_positive("jump", jump)
        self.backoff = check_positive("backoff", backoff)
        self.max_rejections = check_int("max_rejections", max_rejections, minimum=1)
        self.recent: deque[float] = deque(maxlen=check_int("window", window, minimum=2))
        self.rejected = 0
        self._consecutive = 0
        self._good = self._snapshot()
        self._pending = self._good

    def _snapshot(self):
        params = {name: p.detach().clone()
                  for name, p in pyro.get_param_store().named_parameters()}
        states = {p: _copy_state(opt.state[p]) for p, opt in self.svi.optim.optim_objs.items()
                  if p in opt.state}
        return params, states

    def save(self) -> None:
        """Copy the parameters before a step (call it right before ``svi.step``)."""
        self._pending = self._snapshot()

    def _jumped(self, loss: float) -> bool:
        if len(self.recent) < self.recent.maxlen // 2 or self._consecutive >= 3:
            return False
        med = statistics.median(self.recent)
        mad = statistics.median(abs(x - med) for x in self.recent)
        return loss > med + self.jump * max(1.4826 * mad, 1e-3 * max(abs(med), 1.0))

    def check(self, loss: float) -> bool:
        """Accept the step that returned ``loss`` (``True``), or restore the parameters of
        the last accepted one, lower the rates and return ``False``."""
        if math.isfinite(loss) and not self._jumped(loss):
            self._good, self._consecutive = self._pending, 0
            self.recent.append(loss)
            return True
        self.rejected += 1
        self._consecutive += 1
        if self._consecutive > self.max_rejections:
            raise FloatingPointError(f"loss: {self._consecutive} SVI steps in a row rejected "
                                     f"(last loss {loss}); the guide cannot be fitted from here")
        params, states = self._good
        store = pyro.get_param_store()
        with torch.no_grad():
            for name, p in store.named_parameters():
                if name in params:
                    p.copy_(params[name])
        for p, opt in self.svi.optim.optim_objs.items():
            opt.state[p] = _copy_state(states[p]) if p in states else {}
            for group in opt.param_groups:
                group["lr"] *= self.backoff
        return False


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


@contextlib.contextmanager
def _quiet(nan: bool):
    """No compile-fallback warning (compiling is the comparison's choice, not the user's;
    the reason stays in ``loss.fallbacks``) and, with ``nan``, no NaN-loss warning (the step
    guard reports it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileFallbackWarning)
        if nan:
            warnings.filterwarnings("ignore", message="Encountered NaN")
        yield


def fit_svi(
    problem: Problem,
    guide,
    settings: Settings,
    *,
    loss=None,
    lr: float = 0.02,
    clip_norm: float = 10.0,
    num_steps: int | None = None,
    window: int | None = None,
    tol: float | None = None,
    cooldown: bool = True,
    guard: bool = True,
    desc: str = "SVI",
    compile: bool = True,
) -> SVILosses:
    """Optimize ``guide`` for ``problem`` with Adam, decaying the rate 10x over the step cap.

    Without an explicit ``num_steps`` the run stops early by a convergence rule
    (:func:`converged`): every ``window`` accepted steps, once ``2 * window`` losses exist,
    it stops when the mean loss of the last ``window`` steps changed by at most ``tol``
    (relative) against the ``window`` before; ``settings.num_steps`` is the cap. Defaults
    :data:`pyro_dgm.defaults.SVI_WINDOW` and :data:`pyro_dgm.defaults.SVI_TOLERANCE`. With
    ``cooldown`` (default) a stop is followed by one more window (within the cap) whose rate
    decays geometrically to where the full schedule ends (a tenth of ``lr``): stopping at a
    high rate keeps Adam's noise in the fit (on the default job, without the cool-down, the
    mean-field table's mean abs std error against NUTS went from 0.062 to 0.171). An
    explicit ``num_steps`` runs exactly that many steps unless ``tol`` is given too.

    With ``guard`` (default) every step goes through a :class:`StepGuard`: a step whose loss
    is not finite or jumps far above its recent level is undone and retried at half the
    rate (it counts against the cap; the returned list holds the accepted steps' losses and
    the number rejected).

    :param loss: a :class:`pyro.infer.ELBO`; default ``Trace_ELBO`` with 4 particles
        (vectorized when the problem allows it).
    :param clip_norm: ClippedAdam's bound on each gradient entry.
    :param window: steps per smoothing window; ``tol``: relative tolerance (``0`` turns the
        rule off); ``cooldown``: decay the rate over one more window after a stop.
    :param compile: run the steps through :func:`~pyro_dgm.inference.compile_loss` (the
        same draws and gradients); where its guards fail (e.g. a model that checks its data
        with ``bool(...)``), the ordinary step runs without a warning — compiling is the
        comparison's choice, not the user's — and the reason stays in ``loss.fallbacks``.
    :return: the losses of the accepted steps (:class:`SVILosses`).
    :raises FloatingPointError: (``guard``) the loss is not finite at the start, or stays
        so.
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
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1.0 / num_steps),
                                    "clip_norm": check_positive("clip_norm", clip_norm)})
    svi = SVI(problem.model, guide, optim, loss)
    losses = SVILosses()
    step_guard = None
    if guard:
        with _quiet(nan=True):  # a nan is reported below, naming the loss
            first = svi.evaluate_loss(*problem.args, **problem.kwargs)  # makes the params
        if not math.isfinite(first):
            raise FloatingPointError(f"loss: not finite at the guide's initial parameters "
                                     f"({first})")
        step_guard = StepGuard(svi)

    def take_step() -> bool:
        if step_guard is None:
            with _quiet(nan=False):
                losses.append(svi.step(*problem.args, **problem.kwargs))
            return True
        step_guard.save()
        with _quiet(nan=True):  # the guard handles a nan loss: Pyro need not warn
            value = svi.step(*problem.args, **problem.kwargs)
        if not step_guard.check(value):
            losses.rejected = step_guard.rejected
            return False
        losses.append(value)
        return True

    bar = tqdm(range(num_steps), desc=desc, disable=not settings.progress, leave=False)
    for step in bar:
        accepted = take_step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4g}" if losses else "-")
        if accepted and tol > 0 and len(losses) % window == 0 \
                and converged(losses, window, tol):
            left = num_steps - step - 1
            if cooldown and left > 0:
                # the rate decays geometrically to where the full schedule would have ended,
                # so an early stop does not keep Adam's noise at a high rate
                cool = min(window, left)
                for opt in svi.optim.optim_objs.values():
                    for group in opt.param_groups:
                        group["lrd"] = (lr * 0.1 / group["lr"]) ** (1.0 / cool)
                for _ in range(cool):
                    take_step()
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
        and the ordinary potential, without a warning, where its guards fail)."""
    if compile and isinstance(kernel, VectorizedKernel):
        kernel.compile_potential = True
    mcmc = MCMC(kernel, num_samples=settings.num_samples, warmup_steps=num_warmup(settings),
                num_chains=num_chains, disable_progbar=not settings.progress,
                chain_method="vectorized")
    with warnings.catch_warnings():
        # a fallback to one chain per process says why; chains then may run one by one
        warnings.filterwarnings("ignore", message="chain_method='vectorized'")
        warnings.filterwarnings("ignore", message="num_chains=")
        warnings.simplefilter("ignore", CompileFallbackWarning)
        mcmc.run(*problem.args, **problem.kwargs)
    return from_mcmc(mcmc)
