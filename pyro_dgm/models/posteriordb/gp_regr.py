r"""posteriordb ``gp_pois_regr-gp_regr``: one-dimensional Gaussian-process regression.

The model (posteriordb ``models/stan/gp_regr.stan``), with Stan's squared-exponential
kernel

.. math::

    K_{ij} = \alpha^2 \exp\!\Big(-\frac{(x_i - x_j)^2}{2\rho^2}\Big) + \sigma\,\delta_{ij},
    \qquad y \sim \mathcal N(0, K).

Note that the noise term on the diagonal is ``sigma`` itself, not ``sigma^2``: the
translation keeps that as Stan has it.

Statements and sites:

- ``rho ~ gamma(25, 4)`` -> site ``rho``: ``Gamma(25, rate=4)`` (Stan's ``gamma(a, b)`` has
  rate ``b``); same density, normalizing constant included.
- ``alpha ~ normal(0, 2)`` on ``real<lower=0>`` -> site ``alpha``: ``HalfNormal(2)``;
  ``sigma ~ normal(0, 1)`` -> site ``sigma``: ``HalfNormal(1)``. On the half line these are
  the normal densities times 2, a constant.
- ``y ~ multi_normal_cholesky(0, L_cov)`` -> observed site ``y``: ``MultivariateNormal``
  with ``scale_tril = cholesky(cov)``.

Every parameter is measured as the density of its constrained (positive) value, with no
Jacobian: the log joint of this model equals Stan's ``log_prob(..., jacobian=False)`` up
to one additive constant (Stan's ``~`` drops constants; the half-normal factors of 2 are
constant too).

The model broadcasts over leading batch dimensions of ``rho``, ``alpha`` and ``sigma``
(one ``N x N`` covariance and one Cholesky factor per batch element); it has no plates.
The Cholesky factorization raises if the covariance is numerically not positive definite
(only when ``sigma`` is below about ``1e-16 N alpha^2`` in float64), where Stan rejects the
draw.

The data file also carries ``k`` (Poisson counts of the sibling posterior ``gp_pois_regr``),
which this model does not use; it is accepted and ignored so that the posterior's whole
data file can be passed by keyword.

Credit: posteriordb (stan-dev/posteriordb, BSD-3 licence), model added by Mans Magnusson;
originally from the Stan benchmarks (github.com/stan-dev/stat_comp_benchmarks,
``benchmarks/gp_regr``).

Example::

    >>> import torch
    >>> from pyro import poutine
    >>> x = torch.arange(-10.0, 11.0, 2.0, dtype=torch.float64)
    >>> tr = poutine.trace(gp_regr).get_trace(N=11, x=x, y=torch.sin(x))
    >>> tr.nodes["y"]["fn"].event_shape
    torch.Size([11])
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["exp_quad_cov", "gp_regr"]


def exp_quad_cov(x: Tensor, alpha: Tensor, rho: Tensor) -> Tensor:
    r"""Stan's ``gp_exp_quad_cov(x, alpha, rho)``:
    :math:`\alpha^2 \exp(-(x_i - x_j)^2 / (2\rho^2))`.

    :param x: points, shape ``(N,)``.
    :param alpha: marginal standard deviation, any batch shape ``B``.
    :param rho: length scale, batch shape broadcastable with ``alpha``'s.
    :returns: covariance matrices of shape ``B + (N, N)``.
    """
    sq_dist = (x.unsqueeze(-1) - x.unsqueeze(-2)).square()
    alpha, rho = alpha[..., None, None], rho[..., None, None]
    return alpha.square() * torch.exp(-0.5 * sq_dist / rho.square())


def gp_regr(N: int, x: Tensor, y: Tensor, k: Tensor | None = None) -> None:
    """The Pyro translation of posteriordb's ``gp_regr`` (see the module docstring).

    :param N: number of observations.
    :param x: inputs, shape ``(N,)`` (an integer tensor is converted to ``y``'s dtype, as
        Stan reads ``array[N] real x``).
    :param y: responses, shape ``(N,)``; its dtype and device are the model's.
    :param k: unused (the Poisson counts of ``gp_pois_regr``'s data file).
    :raises ValueError: if ``x`` or ``y`` is not a vector of length ``N``.
    """
    del k  # data of the Poisson sibling model, not read by gp_regr.stan
    for name, value in (("x", x), ("y", y)):
        if tuple(value.shape) != (N,):
            raise ValueError(f"{name}: expected shape ({N},) (N={N}), got {tuple(value.shape)}")
    x = x.to(y)
    rho = pyro.sample("rho", dist.Gamma(y.new_tensor(25.0), y.new_tensor(4.0)))
    alpha = pyro.sample("alpha", dist.HalfNormal(y.new_tensor(2.0)))
    sigma = pyro.sample("sigma", dist.HalfNormal(y.new_tensor(1.0)))
    cov = exp_quad_cov(x, alpha, rho)
    cov = cov + sigma[..., None, None] * torch.eye(N, dtype=y.dtype, device=y.device)
    scale_tril = torch.linalg.cholesky(cov)
    pyro.sample("y", dist.MultivariateNormal(y.new_zeros(N), scale_tril=scale_tril), obs=y)
