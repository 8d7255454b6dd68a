r"""Warm-up adaptation of ChEES-HMC (Hoffman, Radul & Sountsov 2021), BlackJAX style: the
adaptation state (:class:`ChEESState`) apart from what one step of the chains reports
(:class:`ChEESInfo`).

All chains share one step size :math:`h`, one trajectory length :math:`T` and one mass
matrix; iteration :math:`t` integrates for :math:`n_t = \lceil u_t T / h\rceil` leapfrog
steps, :math:`u_t \in (0, 1)` the base-2 Halton (van der Corput) sequence. During warm-up:

- **step size** by dual averaging (Nesterov 2009; Hoffman & Gelman 2014, :math:`\gamma =
  0.05`, :math:`t_0 = 10`, :math:`\kappa = 0.75`, shrinkage point :math:`\log 10h`) on the
  *harmonic mean* of the chains' acceptance probabilities, target :math:`\delta = 0.651`
  (Beskos et al. 2013), divergent chains left out: :math:`H_t = \bigl(\frac1{C'}\sum_c
  \alpha_c^{-1}\bigr)^{-1}`;
- **trajectory length** by Adam (:math:`\beta_1 = 0`, :math:`\beta_2 = 0.95`, rate 0.025,
  each update clipped to :math:`\pm 0.35`) *ascending* the ChEES criterion
  :math:`\tfrac14\mathbb E[(\lVert\theta' - \mathbb E\theta\rVert^2 - \lVert\theta -
  \mathbb E\theta\rVert^2)^2]` in :math:`\log T`, with the per-chain gradient estimate

  .. math::

      \hat g_c = t\,\bigl(\lVert\tilde\theta'_c\rVert^2 - \lVert\tilde\theta_c
      \rVert^2\bigr)\,\tilde\theta'_c\cdot\tilde v'_c,
      \qquad \hat g = \frac{\sum_c \alpha_c \hat g_c}{\sum_c \alpha_c},

  where :math:`t = n_t h \approx u_t T` is the integration time, :math:`\tilde\theta` a
  position centred at the mean over chains (a chain run alone: the running mean of its
  own warm-up draws) and divided by the mass matrix's marginal sds, :math:`\tilde v'` the
  velocity :math:`M^{-1}p'` at the end of the trajectory likewise scaled. The
  sampler uses :math:`\exp` of a moving average of :math:`\log T` (weight
  :math:`m^{-1/2}` at iteration :math:`m`), clipped to :math:`[h, n_{\max} h]`. The Adam
  iterate itself is not clipped (as in TFP, which bounds only the number of leapfrog
  steps): clipping it at :math:`h` would let the step-size spike after each dual-averaging
  restart lift :math:`T` for good. When a window changes the mass matrix, :math:`\log T`
  (iterate and average) moves by :math:`-\tfrac12\log\bar\lambda`, :math:`\bar\lambda`
  the mean eigenvalue of the new covariance in the old metric's coordinates: :math:`T` is
  a time in the metric's units, carried over to the new ones;
- **mass matrix** :math:`M^{-1}` (diagonal or dense) from the chains' moments in Stan's
  doubling windows (:func:`~pyro_dgm.inference.adaptation.adaptation_windows`): with
  :math:`C \ge 2` chains the cross-chain covariance at every step of the window, pooled
  over the window (:math:`C - 1` degrees of freedom per step); a chain run alone uses the
  Welford covariance of its own window draws. Regularized as in Stan,
  :math:`\frac{n}{n+5}\hat\Sigma + 10^{-3}\frac{5}{n+5}I`; the dual averaging restarts
  after every window.

After warm-up the kernel uses the averaged :math:`\log h`, the averaged :math:`T` and the
last mass matrix. Everything is tensor arithmetic on the chains' device; the step index
enters only as a Python integer, so no update synchronizes with a GPU.

Example::

    >>> adapter = ChEESAdapter(dim=3, num_warmup=500)
    >>> state = adapter.init(chains=64, dtype=torch.float64)
    >>> n = adapter.num_steps(t, ratio)                  # ratio: T / h, read on the host
    >>> ...                                              # leapfrog, accept/reject
    >>> state = adapter.update(state, t, ChEESInfo(...))
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyro_dgm._validation import check_choice, check_int, check_positive, check_probability
from pyro_dgm.inference.adaptation import adaptation_windows

__all__ = ["MASS_MATRICES", "ChEESAdapter", "ChEESInfo", "ChEESState", "LaggedScalar",
           "halton"]

#: mass matrix structures: adapted dense or diagonal, or the identity
MASS_MATRICES = ("dense", "diag", "identity")

_GAMMA, _T0, _KAPPA = 0.05, 10.0, 0.75  # dual averaging (Hoffman & Gelman 2014)
_ADAM_RATE, _ADAM_BETA2, _ADAM_EPS, _LOG_CLIP = 0.025, 0.95, 1e-8, 0.35


def halton(index: int, base: int = 2) -> float:
    """Element ``index`` (from 1) of the van der Corput sequence in ``base``, in (0, 1)."""
    out, f = 0.0, 1.0 / base
    while index > 0:
        out += f * (index % base)
        index //= base
        f /= base
    return out


class ChEESState(NamedTuple):
    """Adaptation state (tensors on the chains' device, counters as Python ints)."""

    log_step: torch.Tensor  # () dual-averaging iterate log h
    log_step_avg: torch.Tensor  # () its weighted average (used after warm-up)
    da_error: torch.Tensor  # () running mean of delta - H
    da_center: torch.Tensor  # () shrinkage point mu = log(10 h)
    da_count: int  # iterations since the last restart
    log_length: torch.Tensor  # () Adam iterate log T
    log_length_avg: torch.Tensor  # () moving average of log T (what the sampler uses)
    adam_v: torch.Tensor  # () Adam's averaged squared gradient
    count: int  # warm-up iterations done
    scale: torch.Tensor  # (D,) marginal sds of M^{-1}, or (D, D) its lower Cholesky factor
    mean: torch.Tensor  # (D,) running mean of one chain's window draws (Welford)
    m2: torch.Tensor  # (D,) or (D, D) pooled sums of squared deviations in the window
    dof: int  # degrees of freedom in m2
    window_count: int  # steps in the current window


class ChEESInfo(NamedTuple):
    """What one step of the chains reports to the adaptation, per chain."""

    initial: torch.Tensor  # (C, D) positions at the start of the trajectory
    proposal: torch.Tensor  # (C, D) positions at its end
    velocity: torch.Tensor  # (C, D) M^{-1} p at its end
    accept_prob: torch.Tensor  # (C,)
    diverging: torch.Tensor  # (C,) bool
    position: torch.Tensor  # (C, D) positions after accept/reject
    time: torch.Tensor | float  # integration time n_t h of the step


class ChEESAdapter:
    r"""Step size, trajectory length and mass matrix of ChEES-HMC over ``dim`` coordinates.

    :param dim: number of unconstrained coordinates :math:`D`.
    :param num_warmup: warm-up iterations (sets the mass-matrix windows).
    :param mass_matrix: ``"dense"``, ``"diag"`` or ``"identity"``.
    :param target_accept: target harmonic-mean acceptance probability, in (0, 1).
    :param step_size: initial :math:`h`; the initial :math:`T` is :math:`h`.
    :param max_num_steps: the most leapfrog steps of one iteration :math:`n_{\max}`.
    :param adapt_step_size: dual averaging of :math:`h`.
    :param adapt_trajectory: Adam on :math:`\log T`.
    :param trajectory_length: initial :math:`T` (default :math:`h`).

    The mass matrix starts as the identity or as the ``inverse_mass_matrix`` given to
    :meth:`init` (e.g. a Laplace approximation's covariance).
    """

    def __init__(self, dim: int, num_warmup: int, *, mass_matrix: str = "dense",
                 target_accept: float = 0.651, step_size: float = 0.1,
                 max_num_steps: int = 1000, adapt_step_size: bool = True,
                 adapt_trajectory: bool = True, trajectory_length: float | None = None):
        self.dim = check_int("dim", dim, minimum=1)
        self.num_warmup = check_int("num_warmup", num_warmup, minimum=0)
        self.mass_matrix = check_choice("mass_matrix", mass_matrix, MASS_MATRICES)
        self.target_accept = check_probability("target_accept", target_accept)
        self.step_size = check_positive("step_size", step_size)
        self.max_num_steps = check_int("max_num_steps", max_num_steps, minimum=1)
        self.trajectory_length = check_positive(
            "trajectory_length", trajectory_length if trajectory_length is not None
            else self.step_size)
        self.adapt_step_size = bool(adapt_step_size)
        self.adapt_trajectory = bool(adapt_trajectory)
        self.windows = adaptation_windows(num_warmup) if mass_matrix != "identity" else []
        self._starts = {s for s, _ in self.windows}
        self._ends = {e - 1 for _, e in self.windows}
        self._inside = {t for s, e in self.windows for t in range(s, e)}

    @property
    def dense(self) -> bool:
        return self.mass_matrix == "dense"

    def init(self, chains: int, dtype=torch.float64, device=None,
             inverse_mass_matrix: torch.Tensor | None = None) -> ChEESState:
        """Initial state for ``chains`` chains: :math:`T = h_0` and the identity mass matrix,
        or ``inverse_mass_matrix`` (``(D,)`` diagonal or ``(D, D)`` dense; a dense one
        keeps only its diagonal under ``mass_matrix="diag"``).

        :raises ValueError: ``inverse_mass_matrix`` of the wrong shape, not finite, not
            positive definite, or given with ``mass_matrix="identity"``."""
        d = self.dim
        scalar = torch.zeros((), dtype=dtype, device=device)
        log_h = scalar + math.log(self.step_size)
        log_t = scalar + math.log(self.trajectory_length)
        scale = (torch.eye(d, dtype=dtype, device=device) if self.dense
                 else torch.ones(d, dtype=dtype, device=device))
        if inverse_mass_matrix is not None:
            scale = self._initial_scale(inverse_mass_matrix.to(dtype=dtype, device=device))
        m2 = torch.zeros((d, d) if self.dense else (d,), dtype=dtype, device=device)
        return ChEESState(log_h, log_h, scalar, log_h + math.log(10.0), 0, log_t, log_t,
                          scalar, 0, scale, torch.zeros(d, dtype=dtype, device=device), m2, 0, 0)

    def _initial_scale(self, inverse_mass_matrix: torch.Tensor) -> torch.Tensor:
        """Cholesky factor or marginal sds of a user's inverse mass matrix (one host read,
        at set-up)."""
        name, d, m = "inverse_mass_matrix", self.dim, inverse_mass_matrix
        if self.mass_matrix == "identity":
            raise ValueError(f"{name}: not used with mass_matrix='identity'")
        if m.shape not in ((d,), (d, d)):
            raise ValueError(f"{name}: expected shape ({d},) or ({d}, {d}) for {d} "
                             f"unconstrained coordinates, got {tuple(m.shape)}")
        if not bool(torch.isfinite(m).all()):
            raise ValueError(f"{name}: not finite")
        if m.dim() == 2 and not self.dense:
            m = m.diagonal()
        if m.dim() == 1:
            if not bool((m > 0).all()):
                raise ValueError(f"{name}: not positive")
            return m.sqrt() if not self.dense else torch.diag_embed(m.sqrt())
        chol, info = torch.linalg.cholesky_ex(m)
        if int(info) != 0 or not bool(torch.allclose(m, m.mT)):
            raise ValueError(f"{name}: not symmetric positive definite")
        return chol

    # -- what the sampler needs ------------------------------------------------------------
    def num_steps(self, t: int, ratio: float) -> int:
        r""":math:`n_t = \lceil u_t\, T/h \rceil` in :math:`[1, n_{\max}]` (``ratio`` is
        :math:`T/h` as a Python float); ``t`` counts iterations from 0."""
        n = math.ceil(halton(t + 1) * ratio) if math.isfinite(ratio) else self.max_num_steps
        return min(max(n, 1), self.max_num_steps)

    def step_size_of(self, state: ChEESState, final: bool = False) -> torch.Tensor:
        """:math:`h` during warm-up (``final=False``) or after it."""
        return (state.log_step_avg if final else state.log_step).exp()

    def length_of(self, state: ChEESState, final: bool = False) -> torch.Tensor:
        r""":math:`T` (the moving average), clipped to :math:`[h, n_{\max} h]`."""
        log_h = state.log_step_avg if final else state.log_step
        return state.log_length_avg.clamp(log_h, log_h + math.log(self.max_num_steps)).exp()

    def ratio(self, state: ChEESState, final: bool = False) -> torch.Tensor:
        """:math:`T/h` as a tensor (the sampler reads it on the host, lagged)."""
        return self.length_of(state, final) / self.step_size_of(state, final)

    def marginal_sd(self, scale: torch.Tensor) -> torch.Tensor:
        """Marginal sds of :math:`M^{-1}` from its diagonal or Cholesky ``scale``."""
        return scale.norm(dim=-1) if self.dense else scale

    # -- the update ----------------------------------------------------------------------------
    def update(self, state: ChEESState, t: int, info: ChEESInfo) -> ChEESState:
        """The state after warm-up iteration ``t`` (0-based) reported ``info``."""
        s = state._asdict()
        s["count"] = m = state.count + 1
        ok = ~info.diverging
        alpha = torch.where(ok, info.accept_prob, torch.zeros_like(info.accept_prob))
        if self.adapt_step_size:
            self._dual_averaging(s, alpha, ok)
        if self.adapt_trajectory:
            self._adam(s, state, info, alpha, m)
        self._moments(s, t, info.position)
        return ChEESState(**s)

    def _dual_averaging(self, s: dict, alpha: torch.Tensor, ok: torch.Tensor) -> None:
        k = s["da_count"] = s["da_count"] + 1
        inverse = torch.where(ok, 1.0 / alpha.clamp_min(1e-30), torch.zeros_like(alpha))
        harmonic = ok.sum() / inverse.sum()  # 0 when some chain has alpha ~ 0
        harmonic = torch.where(torch.isfinite(harmonic), harmonic, torch.zeros_like(harmonic))
        w = 1.0 / (k + _T0)
        s["da_error"] = (1 - w) * s["da_error"] + w * (self.target_accept - harmonic)
        s["log_step"] = s["da_center"] - math.sqrt(k) / _GAMMA * s["da_error"]
        eta = k ** -_KAPPA
        s["log_step_avg"] = eta * s["log_step"] + (1 - eta) * s["log_step_avg"]

    def _adam(self, s: dict, state: ChEESState, info: ChEESInfo, alpha: torch.Tensor,
              m: int) -> None:
        sd = self.marginal_sd(state.scale)
        chains = info.initial.shape[0]
        if chains > 1:
            centre_new = (alpha.unsqueeze(-1) * info.proposal).sum(0) / alpha.sum().clamp_min(
                1e-30)
            centre_old = info.initial.mean(0)
        else:  # one chain: the running mean of its own history
            centre_new = centre_old = state.mean
        new = (info.proposal - centre_new) / sd
        old = (info.initial - centre_old) / sd
        per_chain = (info.time * ((new * new).sum(-1) - (old * old).sum(-1))
                     * (new * info.velocity / sd).sum(-1))
        per_chain = torch.where(alpha > 0, per_chain, torch.zeros_like(per_chain))
        grad = (alpha * per_chain).sum() / alpha.sum().clamp_min(1e-30)
        finite = torch.isfinite(grad)
        grad = torch.where(finite, grad, torch.zeros_like(grad))
        v = _ADAM_BETA2 * state.adam_v + (1 - _ADAM_BETA2) * grad * grad
        v_hat = v / (1 - _ADAM_BETA2 ** m)
        step = (_ADAM_RATE * grad / (v_hat.sqrt() + _ADAM_EPS)).clamp(-_LOG_CLIP, _LOG_CLIP)
        log_t = state.log_length + step
        s["adam_v"] = torch.where(finite, v, state.adam_v)
        s["log_length"] = log_t
        w = m ** -0.5
        s["log_length_avg"] = (1 - w) * state.log_length_avg + w * log_t

    def _moments(self, s: dict, t: int, z: torch.Tensor) -> None:
        """Accumulate the window's moments (and one chain's running mean)."""
        if t in self._starts:
            s["mean"], s["m2"] = torch.zeros_like(s["mean"]), torch.zeros_like(s["m2"])
            s["dof"], s["window_count"] = 0, 0
        s["window_count"] = k = s["window_count"] + 1
        chains = z.shape[0]
        if chains > 1:
            dev = z - z.mean(0)
            other = dev
            s["dof"] += chains - 1
            s["mean"] = s["mean"] + (z.mean(0) - s["mean"]) / k
        else:  # Welford over one chain's draws
            dev = z[0] - s["mean"]
            s["mean"] = s["mean"] + dev / k
            other = (z[0] - s["mean"]).unsqueeze(0)
            dev = dev.unsqueeze(0)
            s["dof"] = k - 1
        if t not in self._inside:
            return
        s["m2"] = s["m2"] + (dev.mT @ other if self.dense else (dev * other).sum(0))
        if t in self._ends and s["dof"] > 0:
            old, s["scale"] = s["scale"], self._scale(s["m2"], s["dof"])
            if self.adapt_trajectory:  # T is a time in the metric's units: carry it over
                shift = 0.5 * self._mean_variance(old, s["scale"]).log()
                shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
                s["log_length"] = s["log_length"] - shift
                s["log_length_avg"] = s["log_length_avg"] - shift
            s["da_center"] = s["log_step"] + math.log(10.0)  # restart the dual averaging
            s["da_error"] = torch.zeros_like(s["da_error"])
            s["da_count"] = 0

    def _mean_variance(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        r"""Mean eigenvalue :math:`\operatorname{tr}(L_{old}^{-1}\Sigma L_{old}^{-\top})/D` of
        the new :math:`\Sigma = L_{new}L_{new}^\top` in the old metric's coordinates."""
        if self.dense:
            rel = torch.linalg.solve_triangular(old, new, upper=False)
            return (rel * rel).sum() / self.dim
        return ((new / old) ** 2).mean()

    def _scale(self, m2: torch.Tensor, n: int) -> torch.Tensor:
        shrink, jitter = n / (n + 5.0), 1e-3 * 5.0 / (n + 5.0)
        if self.dense:
            eye = torch.eye(self.dim, dtype=m2.dtype, device=m2.device)
            cov = shrink * m2 / n + jitter * eye
            chol, info = torch.linalg.cholesky_ex(cov)
            # a failed factorization keeps the diagonal instead; no host sync
            diag = torch.diag_embed(cov.diagonal().clamp_min(jitter).sqrt())
            return torch.where(info > 0, diag, chol)
        return (shrink * m2 / n + jitter).sqrt()


class LaggedScalar:
    """A device scalar read on the host two pushes late: copies are non-blocking (pinned
    memory, an event per copy on CUDA), so reading waits only for work long queued."""

    def __init__(self, value: float, device: torch.device):
        self.cuda = device.type == "cuda"
        self.slots = [torch.full((), value, dtype=torch.float64, pin_memory=self.cuda)
                      for _ in range(2)]
        self.events: list = [None, None]
        self.pushes = 0

    def push(self, value: torch.Tensor) -> None:
        i = self.pushes % 2
        self.slots[i].copy_(value.detach(), non_blocking=True)
        if self.cuda:
            self.events[i] = torch.cuda.Event()
            self.events[i].record()
        self.pushes += 1

    def read(self) -> float:
        i = self.pushes % 2  # the older slot
        if self.events[i] is not None:
            self.events[i].synchronize()
        return float(self.slots[i])
