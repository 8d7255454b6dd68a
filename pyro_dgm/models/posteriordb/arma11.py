r"""posteriordb ``arma-arma11``: the ARMA(1, 1) time series model, in Pyro.

The Stan model (posteriordb ``models/stan/arma11.stan``)::

    data { int<lower=1> T; array[T] real y; }
    parameters { real mu; real phi; real theta; real<lower=0> sigma; }
    model {
      mu ~ normal(0, 10);  phi ~ normal(0, 2);  theta ~ normal(0, 2);
      sigma ~ cauchy(0, 2.5);
      nu[1] = mu + phi * mu;                                   // err[0] == 0
      err[1] = y[1] - nu[1];
      for (t in 2:T) { nu[t] = mu + phi * y[t-1] + theta * err[t-1];
                       err[t] = y[t] - nu[t]; }
      err ~ normal(0, sigma);
    }

Sites (Stan statement → Pyro site):

- ``mu ~ normal(0, 10)``, ``phi ~ normal(0, 2)``, ``theta ~ normal(0, 2)`` → sample sites
  ``mu``, ``phi``, ``theta`` (scalars, unconstrained);
- ``sigma ~ cauchy(0, 2.5)`` on ``real<lower=0>`` → ``sigma`` with
  :class:`~pyro.distributions.HalfCauchy` ``(2.5)``, twice Stan's unnormalized half density
  (a constant), measured on the positive reals in the constrained space (no Jacobian);
- ``err ~ normal(0, sigma)`` → the observed site ``err`` (``Normal(0, sigma)`` over the plate
  ``time`` of size ``T``) whose value is the error vector computed from ``y`` and the
  parameters. The map ``y → err`` is unit lower-triangular (Jacobian 1), so this is also the
  density of ``y``.

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
(``(S, 1)`` per scalar); the error vector is then ``(S, T)``.

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

from typing import Any

import pyro
import pyro.distributions as dist
import torch

from pyro_dgm.models.posteriordb._stan import stan_int, stan_vector

__all__ = ["arma11", "arma11_errors"]


def arma11_errors(y: torch.Tensor, mu: torch.Tensor, phi: torch.Tensor,
                  theta: torch.Tensor) -> torch.Tensor:
    r"""The ARMA(1, 1) one-step errors ``err`` of Stan's loop, without a loop over time.

    :param y: the series, shape ``(T,)``.
    :param mu: the mean, shape ``batch + (1,)`` or ``()`` (likewise ``phi`` and ``theta``).
    :returns: ``err``, shape ``batch + (T,)``: the solution of :math:`(I + \theta S)\,
        \mathrm{err} = r` (see the module docstring).
    """
    T = y.shape[-1]
    first = torch.zeros_like(y)
    first[0] = 1.0
    y_lag = torch.nn.functional.pad(y[:-1], (1, 0))  # y[t-1], 0 at t = 1
    r = y - mu - phi * (y_lag + mu * first)  # at t = 1: y[1] - mu - phi * mu
    theta = theta.expand(r.shape)[..., :1]  # batch + (1,): one theta per batch element
    shift = torch.diag(y.new_ones(T - 1), -1)
    lower = torch.eye(T, dtype=y.dtype, device=y.device) + theta.unsqueeze(-1) * shift
    err = torch.linalg.solve_triangular(lower, r.unsqueeze(-1), upper=False, unitriangular=True)
    return err.squeeze(-1)


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
    err = arma11_errors(y, mu, phi, theta)
    with pyro.plate("time", T, dim=-1):
        pyro.sample("err", dist.Normal(zero, sigma), obs=err)
