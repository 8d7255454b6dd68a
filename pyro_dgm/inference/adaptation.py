r"""Warm-up adaptation of a Gaussian random-walk proposal (BlackJAX style: state apart from
the per-step inputs).

A proposal :math:`u' = u + h\,L\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I_D)`, is
tuned during warm-up in two ways:

- **step size** :math:`h` by Robbins–Monro on :math:`\log h` towards the target acceptance
  :math:`\alpha^\ast` (0.234, Roberts, Gelman & Gilks 1997):
  :math:`\log h_{t+1} = \log h_t + \gamma_t(\bar\alpha_t - \alpha^\ast)`,
  :math:`\gamma_t = (t + 1)^{-0.6}` (Andrieu & Thoms 2008), where :math:`\bar\alpha_t` is the
  acceptance probability averaged over all units (chains, plate elements) updated together;
- **proposal covariance** :math:`LL^\top` (Haario, Saksman & Tamminen 2001) from warm-up
  draws, estimated in Stan's doubling windows (75-step initial buffer, windows of 25, 50,
  100, ..., 50-step terminal buffer; 15% / 75% / 10% for short warm-ups). Within a window
  the draws of every unit are accumulated with Welford's algorithm and the within-unit
  covariances are pooled, so chains in different places (or with different data) do not
  inflate it. At each window end :math:`LL^\top` becomes the regularized estimate

  .. math::

      \frac{n}{n+5}\hat\Sigma + 10^{-3}\,\frac{5}{n+5}\operatorname{diag}(\hat\Sigma)

  (:math:`n` the pooled degrees of freedom): the jitter is relative to each coordinate's
  own variance, so coordinates with scales from :math:`10^{-3}` to :math:`10` are treated
  alike. A coordinate that no pooled unit moved in the window keeps its previous proposal
  variance. The step size then restarts at the Gaussian optimum :math:`2.38/\sqrt D`
  (Gelman, Roberts & Gilks 1996).
- **screening** (``screen=True``, what :class:`~pyro_dgm.inference.RandomWalkMH` uses for
  chains that share one target): the adapter also gets each unit's log density and keeps
  each unit's Welford sums apart within a window. At the window end only the units whose
  mean log density over the window is in the main group
  (:func:`~pyro_dgm.inference.chain_health.main_group`, two-sided: within 5 scaled MADs
  plus 2 nats of the median) are pooled, and until the next window end the step size follows
  the acceptance of those units only. A few chains in a minor mode (or still far out, or
  alone in a narrow spike) then spoil neither the covariance nor the step size of the rest.
  The per-unit sums take :math:`U D^2` numbers for a dense proposal; above :math:`2^{24}`
  the adapter pools all units as without screening.
- **spread** (``spread=True``, with screening): in every window but the last, the pooled
  units' draws are taken about their common mean, i.e. the spread between the units'
  window means is added to the within-unit sums (:math:`n = \sum_u w_u\,\mathrm{count} - 1`).
  Chains that have not yet crossed the posterior in a wide direction still lie apart in it
  (a random walk tuned to the narrowest scale crosses a coordinate :math:`10^4` times wider
  only by diffusion, and the within-chain estimate grows by a factor of about two per
  window), so the proposal reaches the posterior's scale within a few windows. The last
  window uses the within-unit sums alone, as before, so the kernel after warm-up is
  estimated the same way.

Everything is tensor arithmetic on the device and depends on the step index only through
Python integers, so adaptation never synchronizes with a GPU.

Example::

    >>> adapter = ProposalAdapter(dim=3, num_warmup=500)
    >>> state = adapter.init(units=64, dtype=torch.float64)
    >>> for t in range(500):
    ...     proposal = adapter.propose(state, u)        # u: (64, 3)
    ...     u, accept_prob = ...                         # Metropolis-Hastings accept/reject
    ...     state = adapter.adapt(state, t, u, accept_prob)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyro_dgm._validation import check_choice, check_int, check_positive, check_probability
from pyro_dgm.inference.chain_health import main_group

__all__ = ["COVARIANCES", "ProposalAdapter", "ProposalState", "adaptation_windows",
           "check_proposal_args"]

#: proposal covariance structures: adapted dense or diagonal, or the identity (step size only)
COVARIANCES = ("dense", "diag", "identity")

# Above this many numbers (U * D^2, dense) per-unit Welford sums are not kept: no screening.
_UNIT_BUDGET = 2**24

# Up to this dimension products with the D x D factor are done by broadcasting: a BLAS call
# on such tiny matrices costs far more (thread start-up, and milliseconds when the cores are
# busy) than the arithmetic.
_SMALL_DIM = 32


def _matvec(factor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ factor.T`` for ``x`` of shape ``(..., D)``."""
    if factor.shape[-1] <= _SMALL_DIM:
        return (x.unsqueeze(-2) * factor).sum(-1)
    return x @ factor.mT


def _outer_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_u a_u b_u^T`` for ``a, b`` of shape ``(U, D)``."""
    if a.shape[-1] <= _SMALL_DIM:
        return (a.unsqueeze(-1) * b.unsqueeze(-2)).sum(0)
    return a.mT @ b


def _mean(x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x``, weighted over units when ``weights`` match its shape."""
    if weights is None or weights.shape != x.shape:
        return x.mean()
    return (x * weights).sum() / weights.sum()


def adaptation_windows(num_warmup: int, init_buffer: int = 75, term_buffer: int = 50,
                       base_window: int = 25) -> list[tuple[int, int]]:
    """Stan's covariance windows ``[(start, end), ...]`` (warm-up step indices, end exclusive).

    Fewer than 20 warm-up steps: no window (step size only).
    """
    if num_warmup < 20:
        return []
    if init_buffer + base_window + term_buffer > num_warmup:
        init_buffer, term_buffer = int(0.15 * num_warmup), int(0.1 * num_warmup)
        base_window = num_warmup - init_buffer - term_buffer
    last = num_warmup - term_buffer
    windows, start, size = [], init_buffer, base_window
    while start < last:
        end = start + size
        if end + 2 * size > last:  # the next window would not fit: this one takes the rest
            end = last
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


def check_proposal_args(covariance: str, target_accept: float,
                        step_size: float | None) -> tuple[str, float, float | None]:
    """Validate a proposal's settings (``ValueError`` naming the bad one) and return them;
    the kernels call it when constructed, so a bad value fails before any run."""
    covariance = check_choice("covariance", covariance, COVARIANCES)
    target_accept = check_probability("target_accept", target_accept)
    if step_size is not None:
        step_size = check_positive("step_size", step_size)
    return covariance, target_accept, step_size


class ProposalState(NamedTuple):
    """Adaptation state of one proposal (tensors live on the sampler's device)."""

    log_step: torch.Tensor  # () log step size h
    factor: torch.Tensor  # (D,) proposal sd (diag/identity) or (D, D) lower Cholesky (dense)
    mean: torch.Tensor  # (U, D) Welford mean of each unit's draws in the current window
    m2: torch.Tensor  # (D,) or (D, D): pooled within-unit sums of squared deviations
    count: int  # draws per unit in the current window
    rm_step: int  # Robbins-Monro iteration, restarted with each new covariance
    #: screening only: (U,) summed log density of each unit in the current window (then
    #: ``m2`` is per unit, (U, D, D) or (U, D))
    log_density: torch.Tensor | None = None
    #: screening only: (U,) 1 for the units pooled at the last window end, 0 for the others
    pool: torch.Tensor | None = None


class ProposalAdapter:
    """Gaussian random-walk proposal over ``dim`` coordinates with warm-up adaptation.

    :param dim: number of coordinates :math:`D` of one unit.
    :param num_warmup: warm-up steps (sets the covariance windows).
    :param covariance: ``"dense"``, ``"diag"`` or ``"identity"`` (no covariance adaptation).
    :param target_accept: target acceptance probability in (0, 1).
    :param step_size: initial step size (default :math:`2.38/\\sqrt D`).
    :param adapt_step_size: Robbins–Monro adaptation of the step size.
    :param screen: pool only the units in the main group of log density (then :meth:`adapt`
        needs ``log_density``).
    :param spread: with ``screen``, every window but the last also counts the spread between
        the pooled units' means (the units must share one target).
    """

    def __init__(self, dim: int, num_warmup: int, *, covariance: str = "dense",
                 target_accept: float = 0.234, step_size: float | None = None,
                 adapt_step_size: bool = True, screen: bool = False, spread: bool = False):
        self.dim = check_int("dim", dim, minimum=1)
        self.num_warmup = check_int("num_warmup", num_warmup, minimum=0)
        self.covariance, self.target_accept, step_size = check_proposal_args(
            covariance, target_accept, step_size)
        self.optimal_step = 2.38 / math.sqrt(self.dim)
        self.step_size = self.optimal_step if step_size is None else step_size
        self.adapt_step_size = bool(adapt_step_size)
        self.screen = bool(screen)
        self.spread = bool(spread)
        self.windows = adaptation_windows(num_warmup) if covariance != "identity" else []
        self._window_start = {start for start, _ in self.windows}
        self._window_end = {end - 1 for _, end in self.windows}
        self._last_end = self.windows[-1][1] - 1 if self.windows else 0
        self._in_window = [False] * num_warmup
        for start, end in self.windows:
            for t in range(start, end):
                self._in_window[t] = True

    @property
    def dense(self) -> bool:
        return self.covariance == "dense"

    def init(self, units: int, dtype=torch.float64, device=None) -> ProposalState:
        """Initial state for ``units`` units updated together (identity covariance)."""
        d = self.dim
        factor = (torch.eye(d, dtype=dtype, device=device) if self.dense
                  else torch.ones(d, dtype=dtype, device=device))
        shape = (d, d) if self.dense else (d,)
        by_unit = self.screen and units * math.prod(shape) <= _UNIT_BUDGET
        m2 = torch.zeros(((units,) if by_unit else ()) + shape, dtype=dtype, device=device)
        log_step = torch.tensor(math.log(self.step_size), dtype=dtype, device=device)
        ld = torch.zeros(units, dtype=dtype, device=device) if by_unit else None
        return ProposalState(log_step, factor, torch.zeros(units, d, dtype=dtype, device=device),
                             m2, 0, 0, ld)

    def noise(self, state: ProposalState, shape: torch.Size | tuple) -> torch.Tensor:
        """A proposal increment :math:`hL\\varepsilon` of shape ``(*shape, D)``."""
        eps = torch.randn(tuple(shape) + (self.dim,), dtype=state.factor.dtype,
                          device=state.factor.device)
        return self.apply(state.factor, eps) * state.log_step.exp()

    def apply(self, factor: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """:math:`L\\varepsilon` for a dense (lower-triangular) or diagonal ``factor``."""
        return _matvec(factor, eps) if self.dense else eps * factor

    def scaled_factor(self, state: ProposalState) -> torch.Tensor:
        """:math:`hL`: the whole proposal scale, for the fixed kernel after warm-up."""
        return state.factor * state.log_step.exp()

    def propose(self, state: ProposalState, u: torch.Tensor) -> torch.Tensor:
        """Random-walk proposal for ``u`` of shape ``(..., D)``."""
        return u + self.noise(state, u.shape[:-1])

    def adapt(self, state: ProposalState, t: int, u: torch.Tensor,
              accept_prob: torch.Tensor,
              log_density: torch.Tensor | None = None) -> ProposalState:
        """Update after warm-up step ``t`` (0-based) given the new draws ``u`` ``(U, D)`` and
        the acceptance probabilities of that step (any shape; averaged over the pooled
        units); with screening also the units' log densities ``(U,)`` at ``u``."""
        log_step, factor, mean, m2, count, rm_step, ld, pool = state
        if ld is not None and log_density is None:
            raise ValueError("ProposalAdapter(screen=True).adapt: log_density is required")
        if self.adapt_step_size:
            gamma = (rm_step + 1) ** -0.6
            log_step = log_step + gamma * (_mean(accept_prob, pool) - self.target_accept)
        rm_step += 1
        if t < len(self._in_window) and self._in_window[t]:
            if t in self._window_start:
                mean, m2, count = torch.zeros_like(mean), torch.zeros_like(m2), 0
                ld = None if ld is None else torch.zeros_like(ld)
            count += 1
            delta = u - mean
            mean = mean + delta / count
            if ld is not None:  # per unit
                ld = ld + log_density
                m2 = m2 + (delta.unsqueeze(-1) * (u - mean).unsqueeze(-2) if self.dense
                           else delta * (u - mean))
            elif self.dense:
                m2 = m2 + _outer_sum(delta, u - mean)
            else:
                m2 = m2 + (delta * (u - mean)).sum(0)
            if t in self._window_end and count > 1:
                if ld is None:
                    pooled, n = m2, u.shape[0] * (count - 1)
                else:
                    pool = main_group(ld / count, two_sided=True).to(m2.dtype)
                    pooled, n = self._pool(m2, mean, count, pool, spread=t < self._last_end)
                factor = self._factor(pooled, n, factor)
                log_step = torch.full_like(log_step, math.log(self.optimal_step))
                rm_step = 0
        return ProposalState(log_step, factor, mean, m2, count, rm_step, ld, pool)

    def _pool(self, m2: torch.Tensor, mean: torch.Tensor, count: int, pool: torch.Tensor,
              spread: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums of squares over the units with weight ``pool`` and their degrees of freedom:
        within units, plus (``spread`` and :attr:`spread`) between the units' means."""
        pooled = (pool.reshape((-1,) + (1,) * (m2.dim() - 1)) * m2).sum(0)
        units = pool.sum()
        if not (spread and self.spread):
            return pooled, units * (count - 1)
        centre = (pool.unsqueeze(-1) * mean).sum(0) / units
        dev = (mean - centre) * pool.sqrt().unsqueeze(-1)
        between = _outer_sum(dev, dev) if self.dense else (dev * dev).sum(0)
        return pooled + count * between, units * count - 1

    def _factor(self, m2: torch.Tensor, n, previous: torch.Tensor) -> torch.Tensor:
        """The regularized factor from pooled sums ``m2`` with ``n`` degrees of freedom
        (an int, or a tensor when screening chose the units)."""
        shrink = n / (n + 5.0)
        jitter = 1e-3 * 5.0 / (n + 5.0)
        cov = m2 / n
        var = cov.diagonal() if self.dense else cov
        # a coordinate nobody moved keeps its previous proposal variance
        prev_var = (previous**2).sum(-1) if self.dense else previous**2
        fill = torch.where(var > 0, torch.zeros_like(var), prev_var)
        var = var + fill
        if self.dense:
            cov = shrink * (cov + torch.diag_embed(fill)) + torch.diag_embed(jitter * var)
            chol, info = torch.linalg.cholesky_ex(cov)
            # a failed factorization (info > 0) keeps a diagonal factor instead; no host sync
            tiny = torch.finfo(cov.dtype).tiny
            diag = torch.diag_embed(cov.diagonal().clamp_min(tiny).sqrt())
            return torch.where(info > 0, diag, chol)
        return ((shrink + jitter) * var).sqrt()
