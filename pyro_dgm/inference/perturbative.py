r"""The perturbative variational bound of Bamler, Zhang, Opper & Mandt (NIPS 2017).

With :math:`A = \log p(x, z) - \log q(z) - V_0` for a *reference energy* :math:`V_0` and an
**odd** order :math:`K`, the truncated exponential :math:`f_K(A) = \sum_{k=0}^K A^k/k!`
satisfies :math:`f_K(A) \le e^A` for every real :math:`A` (the remainder of an odd-order
Taylor polynomial of :math:`e^A` is nonnegative), hence

.. math::

    \mathcal L_K(q, V_0) = e^{V_0}\, \mathbb E_q\big[f_K(A)\big]
    \;\le\; e^{V_0}\,\mathbb E_q\big[e^{A}\big] = p(x).

:math:`K = 1` is the KL bound, :math:`K \to \infty` tends to :math:`p(x)`; the paper's
choice :math:`K = 3` trades a mass-covering fit (posterior variances closer to the exact ones
than KL-VI's) against the high gradient variance of :math:`\alpha`-divergences.

**Reference energy: closed form.** :math:`\partial_{V_0}\mathcal L_K = e^{V_0}\,
\mathbb E[A^K]/K!`, so the best :math:`V_0` solves :math:`\mathbb E_q[A^K] = 0`. We solve the
sample version :math:`\sum_s (\log w_s - V_0)^K = 0` on the ``S`` particles of each step, per
data point (the left side is strictly decreasing in :math:`V_0`, so the root is unique; for
:math:`K = 3` it is a depressed cubic with one real root, solved in closed form), and treat it
as a constant in the gradient (exact, since the sample objective is stationary in
:math:`V_0` there). We prefer this to a learned parameter because

- it is per data point without a parameter per data point (amortized models, minibatches);
- with it the loss is always defined: :math:`\sum_s A_s^K = 0` leaves
  :math:`\frac1S\sum_s f_K(A_s) = \frac1S\sum_s f_{K-1}(A_s) > 0` (an even-order Taylor
  polynomial of :math:`e^A` is positive), so :math:`\log` of the estimate always exists;
- it maximizes the sample estimate over :math:`V_0`, and since
  :math:`f_K \le \exp` pointwise, :math:`\max_{V_0} e^{V_0}\frac1S\sum_s f_K(A_s) \le
  \frac1S\sum_s w_s`: the reported bound is never above the IWAE estimate from the same
  particles, so it is a stochastic lower bound of :math:`p(x)` and of :math:`\log p(x)`.

**Loss.** Per data point :math:`-\log\hat{\mathcal L}_K = -(V_0 + \log \frac1S\sum_s
f_K(A_s))`, summed over the data, with the subsample scale :math:`N/B` applied after the
logarithm (as in :class:`~pyro_dgm.inference.IWAE`; global latents give one whole-data
bound). Gradients are reparameterized:
:math:`\nabla = \sum_s f_{K-1}(A_s)\nabla\log w_s / \sum_s f_K(A_s)`.

**Order-1 identity.** :math:`f_1(A) = 1 + A`, so
:math:`\log\mathcal L_1(V_0) = V_0 + \log(1 + \mathrm{ELBO} - V_0) \le \mathrm{ELBO}`
(as :math:`\log(1+u) \le u`), with equality exactly at the optimum :math:`V_0 = \mathrm{ELBO}`.
The sample version gives :math:`V_0 = \frac1S\sum_s \log w_s` and
:math:`\frac1S\sum_s f_1(A_s) = 1`: ``PerturbativeELBO(order=1, num_particles=S)`` equals
``Trace_ELBO(num_particles=S)`` in value and gradient.

Example::

    >>> loss = PerturbativeELBO(order=3, num_particles=16, max_plate_nesting=1)
    >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss)
    >>> svi.step(x)                                   # -log L_3, gradients accumulated

Reference: R. Bamler, C. Zhang, M. Opper, S. Mandt (2017), *Perturbative Black Box
Variational Inference*, NIPS.
"""

from __future__ import annotations

import torch

from pyro_dgm._validation import check_int
from pyro_dgm.inference._particles import ParticleObjective, Particles

__all__ = ["PerturbativeELBO", "perturbative_log_bound", "reference_energy", "taylor_exp"]


def _check_order(order) -> int:
    order = check_int("order", order, minimum=1)
    if order % 2 == 0:
        raise ValueError(f"order must be odd (an even-order Taylor polynomial of exp is not "
                         f"a lower bound of it), got {order}")
    return order


def taylor_exp(a: torch.Tensor, order: int) -> torch.Tensor:
    r""":math:`f_K(a) = \sum_{k=0}^{K} a^k / k!` by Horner's rule."""
    out = torch.ones_like(a)
    for k in range(order, 0, -1):
        out = 1 + out * a / k
    return out


def reference_energy(log_weights: torch.Tensor, order: int, dim: int = 0) -> torch.Tensor:
    r"""The :math:`V_0` solving :math:`\sum_s (\log w_s - V_0)^K = 0` along ``dim``
    (detached, ``keepdim``).

    ``order`` 1: the mean; 3: the real root of the depressed cubic
    :math:`u^3 + pu + q = 0` (:math:`p \ge 0`) by the hyperbolic formula
    :math:`u = -2\sqrt{p/3}\,\sinh\big(\tfrac13\operatorname{arsinh}(\tfrac{3q}{2p}
    \sqrt{3/p})\big)`; higher orders: 80 steps of bisection on the sample range.
    """
    order = _check_order(order)
    a = log_weights.detach()
    mean = a.mean(dim, keepdim=True)
    if order == 1:
        return mean
    c = a - mean
    if order == 3:
        p = 3 * (c * c).mean(dim, keepdim=True)
        q = -(c * c * c).mean(dim, keepdim=True)
        tiny = torch.finfo(a.dtype).tiny ** 0.25
        safe = p.clamp_min(tiny)
        root = -2 * (safe / 3).sqrt() * torch.sinh(
            torch.asinh(1.5 * q / safe * (3 / safe).sqrt()) / 3)
        return mean + torch.where(p > tiny, root, torch.zeros_like(root))
    lo, hi = c.amin(dim, keepdim=True), c.amax(dim, keepdim=True)
    for _ in range(80):
        mid = (lo + hi) / 2
        positive = ((c - mid) ** order).sum(dim, keepdim=True) > 0
        lo, hi = torch.where(positive, mid, lo), torch.where(positive, hi, mid)
    return mean + (lo + hi) / 2


def perturbative_log_bound(
    log_weights: torch.Tensor, order: int = 3, *, reference: torch.Tensor | None = None,
    dim: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Estimate :math:`\log \mathcal L_K = V_0 + \log\frac1S\sum_s f_K(\log w_s - V_0)`.

    :param log_weights: :math:`\log w_s = \log p(x, z_s) - \log q(z_s)`, particles along
        ``dim``.
    :param reference: a fixed :math:`V_0` broadcastable to the result with ``dim`` kept;
        default the closed form (:func:`reference_energy`). With a fixed value the mean can
        be nonpositive, and the result is then NaN (or ``-inf``).
    :return: ``(log_bound, V0)``, ``dim`` reduced in the first and kept in the second.
    """
    order = _check_order(order)
    v0 = reference_energy(log_weights, order, dim) if reference is None else reference
    v0 = torch.as_tensor(v0, dtype=log_weights.dtype, device=log_weights.device)
    mean = taylor_exp(log_weights - v0, order).mean(dim)
    return v0.squeeze(dim) + mean.log(), v0


class PerturbativeELBO(ParticleObjective):
    r"""Perturbative bound :math:`\mathcal L_K` (see the module docstring) for Pyro's ``SVI``.

    :param order: odd :math:`K \ge 1` (default 3, as in the paper).
    :param num_particles: particles :math:`S` per step (and per data point); :math:`V_0` is
        fitted to them, so ``num_particles=1`` reduces to the single-sample ELBO.
    :param vectorize_particles: one vectorized trace (else :math:`S` sequential traces).
    :param max_plate_nesting: plate dims of model and guide (guessed when omitted).

    ``loss``/``loss_and_grads``/``differentiable_loss`` give :math:`-\log\hat{\mathcal L}_K`
    summed over the data points (times :math:`N/B` under subsampling).

    :raises ValueError: an even or nonpositive ``order``, ``num_particles < 1``, a guide site
        without ``rsample``; :class:`~pyro_dgm.inference.NonFiniteLossError` if the loss is
        not finite.
    """

    def __init__(self, order: int = 3, num_particles: int = 16, vectorize_particles: bool = True,
                 max_plate_nesting: float = float("inf"), retain_graph: bool | None = None):
        self.order = _check_order(order)
        super().__init__(num_particles, vectorize_particles=vectorize_particles,
                         max_plate_nesting=max_plate_nesting, retain_graph=retain_graph)

    def __repr__(self) -> str:
        return f"PerturbativeELBO(order={self.order}, num_particles={self.num_particles})"

    def _require_reparam(self):
        return f"PerturbativeELBO(order={self.order})"

    def _bound(self, particles: Particles) -> torch.Tensor:
        log_bound, _ = perturbative_log_bound(particles.log_weights, self.order)
        total = log_bound.sum()
        return total * particles.scale if particles.scale != 1.0 else total

