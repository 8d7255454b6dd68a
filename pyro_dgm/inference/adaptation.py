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
  :math:`\frac{n}{n+5}\hat\Sigma + 10^{-3}\frac{5}{n+5} I` and the step size restarts at
  the Gaussian optimum :math:`2.38/\sqrt D` (Gelman, Roberts & Gilks 1996).

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

__all__ = ["COVARIANCES", "ProposalAdapter", "ProposalState", "adaptation_windows",
           "check_proposal_args"]

#: proposal covariance structures: adapted dense or diagonal, or the identity (step size only)
COVARIANCES = ("dense", "diag", "identity")

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


class ProposalAdapter:
    """Gaussian random-walk proposal over ``dim`` coordinates with warm-up adaptation.

    :param dim: number of coordinates :math:`D` of one unit.
    :param num_warmup: warm-up steps (sets the covariance windows).
    :param covariance: ``"dense"``, ``"diag"`` or ``"identity"`` (no covariance adaptation).
    :param target_accept: target acceptance probability in (0, 1).
    :param step_size: initial step size (default :math:`2.38/\\sqrt D`).
    :param adapt_step_size: Robbins–Monro adaptation of the step size.
    """

    def __init__(self, dim: int, num_warmup: int, *, covariance: str = "dense",
                 target_accept: float = 0.234, step_size: float | None = None,
                 adapt_step_size: bool = True):
        self.dim = check_int("dim", dim, minimum=1)
        self.num_warmup = check_int("num_warmup", num_warmup, minimum=0)
        self.covariance, self.target_accept, step_size = check_proposal_args(
            covariance, target_accept, step_size)
        self.optimal_step = 2.38 / math.sqrt(self.dim)
        self.step_size = self.optimal_step if step_size is None else step_size
        self.adapt_step_size = bool(adapt_step_size)
        self.windows = adaptation_windows(num_warmup) if covariance != "identity" else []
        self._window_start = {start for start, _ in self.windows}
        self._window_end = {end - 1 for _, end in self.windows}
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
        m2 = torch.zeros((d, d) if self.dense else (d,), dtype=dtype, device=device)
        log_step = torch.tensor(math.log(self.step_size), dtype=dtype, device=device)
        return ProposalState(log_step, factor, torch.zeros(units, d, dtype=dtype, device=device),
                             m2, 0, 0)

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
              accept_prob: torch.Tensor) -> ProposalState:
        """Update after warm-up step ``t`` (0-based) given the new draws ``u`` ``(U, D)`` and
        the acceptance probabilities of that step (any shape; averaged)."""
        log_step, factor, mean, m2, count, rm_step = state
        if self.adapt_step_size:
            gamma = (rm_step + 1) ** -0.6
            log_step = log_step + gamma * (accept_prob.mean() - self.target_accept)
        rm_step += 1
        if t < len(self._in_window) and self._in_window[t]:
            if t in self._window_start:
                mean, m2, count = torch.zeros_like(mean), torch.zeros_like(m2), 0
            count += 1
            delta = u - mean
            mean = mean + delta / count
            if self.dense:
                m2 = m2 + _outer_sum(delta, u - mean)
            else:
                m2 = m2 + (delta * (u - mean)).sum(0)
            if t in self._window_end and count > 1:
                factor = self._factor(m2, count, u.shape[0])
                log_step = torch.full_like(log_step, math.log(self.optimal_step))
                rm_step = 0
        return ProposalState(log_step, factor, mean, m2, count, rm_step)

    def _factor(self, m2: torch.Tensor, count: int, units: int) -> torch.Tensor:
        n = units * (count - 1)  # degrees of freedom of the pooled estimate
        shrink = n / (n + 5.0)
        jitter = 1e-3 * 5.0 / (n + 5.0)
        if self.dense:
            cov = shrink * m2 / n + jitter * torch.eye(self.dim, dtype=m2.dtype, device=m2.device)
            chol, info = torch.linalg.cholesky_ex(cov)
            # a failed factorization (info > 0) keeps a diagonal factor instead; no host sync
            diag = torch.diag_embed(cov.diagonal().clamp_min(jitter).sqrt())
            return torch.where(info > 0, diag, chol)
        return (shrink * m2 / n + jitter).sqrt()
