r"""posteriordb ``earnings-logearn_interaction_z``: log earnings on standardized height, sex
and their interaction, in Pyro.

The model (posteriordb ``models/stan/logearn_interaction_z.stan``; Gelman & Hill 2007,
ch. 4):

.. math::

    \log \mathrm{earn}_n \sim \mathcal N(\beta_1 + \beta_2 z_n + \beta_3 m_n
    + \beta_4 z_n m_n, \sigma^2), \qquad p(\beta, \sigma) \propto 1 \ (\sigma > 0),

with :math:`z` the height standardized by its sample mean and sample standard deviation
(Stan's ``sd``: denominator :math:`N - 1`).

Sites (Stan statement → Pyro site):

- ``vector[4] beta`` (no ``~``) → ``beta``, event shape ``(4,)``,
  :class:`~pyro.distributions.ImproperUniform` on the reals (a
  :class:`~pyro_dgm.models.posteriordb.improper.FlatPrior`, which initialization can draw
  a starting point from);
- ``real<lower=0> sigma`` (no ``~``) → ``sigma``, ``ImproperUniform`` on the positive reals:
  density 1 for :math:`\sigma > 0` in the constrained space (no Jacobian);
- ``log_earn ~ normal(...)`` → the observed site ``log_earn`` in the plate ``data``
  (size ``N``); its value is the transformed data ``log(earn)`` (the Jacobian of the log is
  data-only, a constant, as in Stan).

Data: ``earn``, ``height`` and ``male`` are stored as integers by posteriordb; integer
tensors are cast to the parameters' dtype. ``earn`` must be positive (``ValueError``
otherwise: Stan would stop on ``log(0)``).

Batches: ``beta`` of shape ``(S, 1, 4)`` and ``sigma`` of shape ``(S, 1)`` score the data
with batch shape ``(S, N)``.

Credit: posteriordb (stan-dev/posteriordb, BSD-3-Clause), model ``logearn_interaction_z``
added by Oliver Järnefelt, from stan-dev/example-models ``ARM/Ch.4/logearn_interaction_z.stan``
(A. Gelman and J. Hill, *Data Analysis Using Regression and Multilevel/Hierarchical
Models*, Cambridge University Press, 2007).

Example::

    >>> values = {"beta": torch.tensor([9.5, 0.1, 0.4, 0.1]), "sigma": torch.tensor(0.9)}
    >>> data = {"N": 3, "earn": torch.tensor([5e4, 6e4, 3e4]),
    ...         "height": torch.tensor([74.0, 66.0, 64.0]), "male": torch.tensor([1.0, 0, 0])}
    >>> poutine.trace(poutine.condition(logearn_interaction_z, data=values)).get_trace(**data)
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from pyro_dgm.models.posteriordb._stan import flat, log_positive, stan_int, stan_vector

__all__ = ["logearn_interaction_z"]


def logearn_interaction_z(*, N: Any, earn: Any, height: Any, male: Any) -> None:
    """The interaction regression (posteriordb ``earnings-logearn_interaction_z``).

    :param N: number of people (Stan ``int<lower=0> N``; at least 2 for ``sd(height)``).
    :param earn: earnings, shape ``(N,)``, positive.
    :param height: heights, shape ``(N,)``, not all equal.
    :param male: 1 for men, 0 for women, shape ``(N,)``.
    :raises ValueError: naming the data item that does not fit.
    """
    N = stan_int("N", N, minimum=2)
    beta = pyro.sample("beta", flat(constraints.real, (4,), like=earn))
    sigma = pyro.sample("sigma", flat(constraints.positive, like=earn))
    earn = stan_vector("earn", earn, N, like=beta)
    height = stan_vector("height", height, N, like=beta)
    male = stan_vector("male", male, N, like=beta)
    # transformed data
    log_earn = log_positive("earn", earn)
    sd = height.std()
    if not bool(sd > 0):
        raise ValueError("height: all values equal; it cannot be standardized")
    z_height = (height - height.mean()) / sd
    inter = z_height * male
    loc = beta[..., 0] + beta[..., 1] * z_height + beta[..., 2] * male + beta[..., 3] * inter
    with pyro.plate("data", N, dim=-1):
        pyro.sample("log_earn", dist.Normal(loc, sigma), obs=log_earn)
