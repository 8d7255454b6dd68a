r"""posteriordb ``arma-arma11``: the ARMA(1, 1) time series model, in Pyro.

The model (posteriordb ``models/stan/arma11.stan``), with :math:`y_0 := \mu`, :math:`e_0 := 0`:

.. math::

    e_t = y_t - \mu - \phi\,y_{t-1} - \theta\,e_{t-1}, \qquad e_t \sim \mathcal N(0, \sigma^2),
    \qquad \mu \sim \mathcal N(0, 10^2),\ \phi, \theta \sim \mathcal N(0, 2^2),\
    \sigma \sim \mathrm{HalfCauchy}(2.5).

Sites (Stan statement → Pyro site):

- ``mu ~ normal(0, 10)``, ``phi ~ normal(0, 2)``, ``theta ~ normal(0, 2)`` → sample sites
  ``mu``, ``phi``, ``theta`` (scalars, unconstrained);
- ``sigma ~ cauchy(0, 2.5)`` on ``real<lower=0>`` → ``sigma`` with
  :class:`~pyro.distributions.HalfCauchy` ``(2.5)``, twice Stan's unnormalized half density
  (a constant), measured on the positive reals in the constrained space (no Jacobian);
- ``err ~ normal(0, sigma)`` → the observed site ``y`` over the plate ``time`` (size
  ``T``) with the distribution :class:`ARMA11`, whose ``log_prob(y)`` is
  ``Normal(0, sigma).log_prob(err(y))`` per time step (the one-step-ahead densities
  :math:`p(y_t \mid y_{<t})`). The map ``y → err`` is unit lower-triangular (Jacobian 1),
  so this is Stan's density and also the density of the series ``y``: the site holds the
  data, its pointwise log-likelihood is per time step, and it can be sampled
  (:func:`arma11_series`) for predictive checks.

The error recursion is linear in the errors,

.. math::

    \mathrm{err}_t + \theta\,\mathrm{err}_{t-1} = r_t, \qquad
    r_t = y_t - \mu - \phi\, y_{t-1} \ (t \ge 2), \qquad r_1 = y_1 - \mu - \phi\mu,

i.e. :math:`L(\theta)\,\mathrm{err} = r` with :math:`L = I + \theta S` (``S`` the subdiagonal
shift): :func:`arma11_errors` solves it with :func:`torch.linalg.solve_triangular` (forward
substitution, exactly the Stan loop's arithmetic, for any :math:`\theta`; the closed form
:math:`\mathrm{err}_t = \sum_k (-\theta)^{t-k} r_k` overflows for :math:`|\theta| > 1`).
Cost: :math:`O(T^2)` memory per batch element (320 KB for ``T = 200`` in float64).

Batches: the parameters may carry leading batch dimensions to the left of the ``time`` plate
(``(S, 1)`` per scalar); the log-likelihood of ``y`` is then ``(S, T)``.

Credit: posteriordb (stan-dev/posteriordb, BSD-3-Clause), model ``arma11`` added by Måns
Magnusson, from Stan's benchmark suite stan-dev/stat_comp_benchmarks
(``benchmarks/arma``).

Example::

    >>> data = {"T": 3, "y": torch.tensor([0.7, 0.6, 0.9], dtype=torch.float64)}
    >>> values = {k: torch.tensor(v, dtype=torch.float64)
    ...           for k, v in {"mu": 0.1, "phi": 0.5, "theta": 0.2, "sigma": 0.3}.items()}
    >>> trace = poutine.trace(poutine.condition(arma11, data=values)).get_trace(**data)
    >>> trace.log_prob_sum()
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.distributions.util import broadcast_shape

from pyro_dgm.models.posteriordb._stan import stan_int, stan_vector

__all__ = ["ARMA11", "arma11", "arma11_errors", "arma11_series"]


def _bidiagonal(coef: torch.Tensor, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """``I + coef * S`` of shape ``shape[:-1] + (T, T)``, one ``coef`` per batch element."""
    T = shape[-1]
    coef = coef.expand(shape)[..., :1].unsqueeze(-1)  # batch + (1, 1)
    shift = torch.diag(like.new_ones(T - 1), -1)
    return torch.eye(T, dtype=like.dtype, device=like.device) + coef * shift


def _solve(lower: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Forward substitution ``lower^{-1} rhs`` (unit diagonal) for each batch element."""
    out = torch.linalg.solve_triangular(lower, rhs.unsqueeze(-1), upper=False,
                                        unitriangular=True)
    return out.squeeze(-1)


def arma11_errors(y: torch.Tensor, mu: torch.Tensor, phi: torch.Tensor,
                  theta: torch.Tensor) -> torch.Tensor:
    r"""The ARMA(1, 1) one-step errors ``err`` of Stan's loop, without a loop over time.

    :param y: the series, shape ``(..., T)``.
    :param mu: the mean, shape ``batch + (1,)`` or ``()`` (likewise ``phi`` and ``theta``).
    :returns: ``err``, shape ``batch + (T,)``: the solution of :math:`(I + \theta S)\,
        \mathrm{err} = r` (see the module docstring).
    """
    first = y.new_zeros(y.shape[-1:])  # e_1
    first[0] = 1.0
    y_lag = torch.nn.functional.pad(y[..., :-1], (1, 0))  # y[t-1], 0 at t = 1
    r = y - mu - phi * (y_lag + mu * first)  # at t = 1: y[1] - mu - phi * mu
    return _solve(_bidiagonal(theta, r.shape, y), r)


def arma11_series(err: torch.Tensor, mu: torch.Tensor, phi: torch.Tensor,
                  theta: torch.Tensor) -> torch.Tensor:
    r"""The series ``y`` whose errors are ``err`` (the inverse of :func:`arma11_errors`):
    :math:`(I - \phi S)\, y = \mu + \phi\mu e_1 + (I + \theta S)\,\mathrm{err}`."""
    first = err.new_zeros(err.shape[-1:])  # e_1
    first[0] = 1.0
    moving = err + theta * torch.nn.functional.pad(err[..., :-1], (1, 0))
    rhs = mu + phi * mu * first + moving
    return _solve(_bidiagonal(-phi, rhs.shape, err), rhs)


class ARMA11(TorchDistribution):
    r"""The series ``y`` of an ARMA(1, 1) process started at ``err[0] = 0``, scored as its
    ``T`` one-step-ahead normal densities :math:`\mathcal N(\mathrm{err}_t(y); 0,
    \sigma^2)`, so ``log_prob`` has one entry per time step (batch shape ``(..., T)``).

    The time entries are *not* independent: entry ``t`` depends on ``y[:t]``. Sum them, and
    do not subsample the time plate. ``sample`` draws the errors and maps them to the series
    with :func:`arma11_series`.

    :param mu: ``phi``, ``theta``: shape ``batch + (1,)`` or ``()``.
    :param sigma: positive, shape ``batch + (1,)`` or ``()``.
    :param T: length of the series.
    """

    arg_constraints = {"mu": constraints.real, "phi": constraints.real,
                       "theta": constraints.real, "sigma": constraints.positive}
    support = constraints.real

    def __init__(self, mu, phi, theta, sigma, T: int, validate_args=None):
        shape = broadcast_shape(mu.shape, phi.shape, theta.shape, sigma.shape, (T,))
        self.mu, self.phi, self.theta, self.sigma = (
            v.expand(shape) for v in (mu, phi, theta, sigma))
        super().__init__(torch.Size(shape), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape[-1:] != self.batch_shape[-1:]:
            raise ValueError(f"ARMA11: cannot expand a series of length "
                             f"{self.batch_shape[-1]} to batch shape {tuple(batch_shape)}")
        return ARMA11(*(v.expand(batch_shape) for v in (self.mu, self.phi, self.theta,
                                                        self.sigma)),
                      T=batch_shape[-1], validate_args=False)

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            err = torch.normal(torch.zeros_like(self.sigma).expand(shape),
                               self.sigma.expand(shape))
            return arma11_series(err, self.mu, self.phi, self.theta)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        err = arma11_errors(value, self.mu, self.phi, self.theta)
        log_prob = dist.Normal(torch.zeros_like(self.sigma), self.sigma,
                               validate_args=False).log_prob(err)
        # |theta| > 1 makes the errors grow like |theta|^t; past an overflow (float32 from
        # |theta| ~ 1.6 at T = 200) the dense solve gives inf and then 0 * inf = NaN. With
        # finite data and parameters that is a density of 0: -inf, not NaN.
        finite = torch.isfinite(value) & torch.isfinite(self.mu) & torch.isfinite(
            self.phi) & torch.isfinite(self.theta) & torch.isfinite(self.sigma)
        return torch.where(finite & ~torch.isfinite(err), -math.inf, log_prob)


def arma11(*, T: Any, y: Any) -> None:
    """The ARMA(1, 1) model (posteriordb ``arma-arma11``); see the module docstring.

    :param T: number of observations (Stan ``int<lower=1> T``).
    :param y: the series, shape ``(T,)`` (Stan ``array[T] real y``).
    :raises ValueError: naming ``T`` or ``y`` if they do not fit Stan's declarations.
    """
    T = stan_int("T", T, minimum=1)
    y = stan_vector("y", y, T)
    zero = y.new_zeros(())
    mu = pyro.sample("mu", dist.Normal(zero, zero + 10.0))
    phi = pyro.sample("phi", dist.Normal(zero, zero + 2.0))
    theta = pyro.sample("theta", dist.Normal(zero, zero + 2.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(zero + 2.5))
    with pyro.plate("time", T, dim=-1):
        pyro.sample("y", ARMA11(mu, phi, theta, sigma, T), obs=y)
