r"""posteriordb ``bball_drive_event_0-hmm_drive_0``: a two-state hidden Markov model with
exponential emissions (basketball drive events).

The model (posteriordb ``models/stan/hmm_drive_0.stan``, generated quantities left
out):

With emission log densities :math:`e_t(k) = \log\phi_k - \phi_k u_t + \log\lambda_k
- \lambda_k v_t` the likelihood is

.. math::

    \log p(u, v \mid \theta, \phi, \lambda) = \log \sum_{z_1, \dots, z_N}
    \exp\Big(e_1(z_1) + \sum_{t=2}^N \big[\log\theta_{z_{t-1} z_t} + e_t(z_t)\big]\Big),

a sum over state paths with *no* initial-state term (every first state has weight one).

Statements and sites:

- ``target += dirichlet_lpdf(theta[k] | alpha[k, :]')`` -> sites ``theta1``, ``theta2``:
  ``Dirichlet(alpha[0])``, ``Dirichlet(alpha[1])`` (the same density on the same simplex,
  normalizing constant included).
- ``positive_ordered[K] phi``, ``lambda`` with the ``normal_lpdf`` terms -> sites ``phi``,
  ``lambda``: ``flat(constraints.positive_ordered_vector)``, a
  :class:`~pyro_dgm.models.posteriordb.improper.FlatPrior` (an ``ImproperUniform``: Stan's
  implicit flat prior on the constrained space) and the factors ``phi_prior``,
  ``lambda_prior``: the sums of ``Normal([0, 3], 1)`` log densities.
- the forward algorithm -> factor ``forward`` (:func:`forward_log_likelihood`).
- ``theta`` (the transformed parameter) is the stacked transition matrix, computed inside
  the model and not recorded as a site.

Every parameter is measured as the density of its constrained value (a point of the
simplex, an increasing positive vector), with no Jacobian: the log joint equals Stan's
``log_prob(..., jacobian=False)`` up to one additive constant.

The forward pass uses :class:`pyro.distributions.DiscreteHMM` (a parallel scan over time:
``O(log N)`` depth, no Python loop over ``N``). Pyro's ``DiscreteHMM`` draws an initial state
and *then* transitions before the first observation, and it normalizes its initial logits;
Stan's pass starts at the first observation with weight one per state. So the first
observation's emission log densities ``e_1`` are passed as the initial logits, the
``DiscreteHMM`` scores observations ``2..N``, and ``logsumexp(e_1)`` (removed by its
normalization) is added back: the result equals Stan's ``log_sum_exp(gamma[N])`` exactly,
not just up to a constant. ``DiscreteHMM`` also renormalizes ``log(theta)`` row-wise, which
changes nothing while the rows of ``theta`` sum to one.

The model broadcasts over leading batch dimensions of all four parameters; it has no
plates. The Stan program fills only ``theta[1]`` and ``theta[2]`` and reads only ``phi[1:2]``
and ``lambda[1:2]``, so ``K`` must be 2.

Credit: posteriordb (stan-dev/posteriordb, BSD-3 licence), model added by Oliver
Järnefelt; originally ``models/drive_0.stan`` of github.com/imadmali/bball-hmm
(Imad Ali, basketball player-tracking HMM).

Example::

    >>> import torch
    >>> from pyro import poutine
    >>> u = torch.rand(50, dtype=torch.float64) + 0.1
    >>> v = 10 * torch.rand(50, dtype=torch.float64)
    >>> alpha = torch.tensor([[4.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    >>> tr = poutine.trace(hmm_drive_0).get_trace(K=2, N=50, u=u, v=v, alpha=alpha)
    >>> tr.nodes["phi"]["value"].shape
    torch.Size([2])
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_dgm.models.posteriordb._stan import flat

__all__ = ["emission_log_prob", "forward_log_likelihood", "hmm_drive_0"]


def _emission_dist(phi: Tensor, lam: Tensor) -> dist.TorchDistribution:
    """Independent exponentials for ``(u, v)``: batch shape ``B + (K,)``, event shape (2,)."""
    return dist.Exponential(torch.stack([phi, lam], dim=-1)).to_event(1)


def emission_log_prob(phi: Tensor, lam: Tensor, u: Tensor, v: Tensor) -> Tensor:
    r""":math:`e_t(k) = \text{exponential\_lpdf}(u_t \mid \phi_k) +
    \text{exponential\_lpdf}(v_t \mid \lambda_k)` for every time and state.

    :param phi: rates for ``u``, shape ``B + (K,)``.
    :param lam: rates for ``v``, shape ``B + (K,)``.
    :param u: observations, shape ``(N,)``.
    :param v: observations, shape ``(N,)``.
    :returns: shape ``B + (N, K)``.
    """
    uv = torch.stack([u, v], dim=-1).unsqueeze(-2)  # (N, 1, 2)
    return _emission_dist(phi.unsqueeze(-2), lam.unsqueeze(-2)).log_prob(uv)


def forward_log_likelihood(theta: Tensor, phi: Tensor, lam: Tensor, u: Tensor,
                           v: Tensor) -> Tensor:
    """Stan's forward algorithm, ``log_sum_exp(gamma[N])``, by a parallel scan.

    :param theta: transition matrices (rows on the simplex), shape ``B + (K, K)``.
    :param phi: emission rates for ``u``, shape ``B + (K,)``.
    :param lam: emission rates for ``v``, shape ``B + (K,)``.
    :param u: observations, shape ``(N,)``.
    :param v: observations, shape ``(N,)``.
    :returns: the log likelihood, shape ``B``.
    """
    first = _emission_dist(phi, lam).log_prob(torch.stack([u[0], v[0]]))  # B + (K,)
    result = first.logsumexp(-1)
    if u.shape[0] == 1:
        return result
    # a time dimension of size one, so that batch dims are not read as time
    hmm = dist.DiscreteHMM(first, theta.log().unsqueeze(-3),
                           _emission_dist(phi.unsqueeze(-2), lam.unsqueeze(-2)))
    return result + hmm.log_prob(torch.stack([u[1:], v[1:]], dim=-1))


def hmm_drive_0(K: int, N: int, u: Tensor, v: Tensor, alpha: Tensor) -> None:
    """The Pyro translation of posteriordb's ``hmm_drive_0`` (see the module docstring).

    :param K: number of states (must be 2).
    :param N: length of the process.
    :param u: 1/speed, shape ``(N,)``; its dtype and device are the model's.
    :param v: hoop distance, shape ``(N,)``.
    :param alpha: Dirichlet parameters of the transition rows, shape ``(K, K)``.
    :raises ValueError: if ``K`` is not 2 or an array has the wrong shape.
    """
    if K != 2:
        raise ValueError(f"K: hmm_drive_0 fills theta[1], theta[2] only, so K must be 2, "
                         f"got {K}")
    for name, value, shape in (("u", u, (N,)), ("v", v, (N,)), ("alpha", alpha, (K, K))):
        if tuple(value.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
    alpha = alpha.to(u)
    theta1 = pyro.sample("theta1", dist.Dirichlet(alpha[0]))
    theta2 = pyro.sample("theta2", dist.Dirichlet(alpha[1]))
    phi = pyro.sample("phi", flat(constraints.positive_ordered_vector, (K,), like=u))
    lam = pyro.sample("lambda", flat(constraints.positive_ordered_vector, (K,), like=u))
    prior = dist.Normal(u.new_tensor([0.0, 3.0]), u.new_tensor(1.0))
    pyro.factor("phi_prior", prior.log_prob(phi).sum(-1))
    pyro.factor("lambda_prior", prior.log_prob(lam).sum(-1))
    theta = torch.stack([theta1, theta2], dim=-2)
    pyro.factor("forward", forward_log_likelihood(theta, phi, lam, u, v))
