r"""posteriordb ``mesquite-logmesquite_logvas``: log weight of mesquite bushes on log canopy
volume, area, shape, total height, density and group, in Pyro.

The model (posteriordb ``models/stan/logmesquite_logvas.stan``; Gelman & Hill 2007,
ch. 4):

Flat priors: :math:`p(\beta, \sigma) \propto 1` on :math:`\mathbb R^7 \times (0, \infty)`.

Sites (Stan statement → Pyro site):

- ``vector[7] beta`` (no ``~``) → ``beta``, event shape ``(7,)``,
  :class:`~pyro.distributions.ImproperUniform` on the reals (a
  :class:`~pyro_dgm.models.posteriordb.improper.FlatPrior`, which initialization can draw
  a starting point from);
- ``real<lower=0> sigma`` (no ``~``) → ``sigma``, ``ImproperUniform`` on the positive reals,
  measured in the constrained space (no Jacobian);
- ``log_weight ~ normal(...)`` → the observed site ``log_weight`` in the plate ``data``
  (size ``N``), its value the transformed data ``log(weight)``.

The transformed data are computed as Stan writes them (products before the log), so the
rounding matches Stan's. ``weight``, ``diam1``, ``diam2``, ``canopy_height``,
``total_height`` and ``density`` must be positive (``ValueError`` otherwise); integer
tensors (``density`` and ``group`` are stored as integers) are cast to the parameters' dtype.

Batches: ``beta`` of shape ``(S, 1, 7)`` and ``sigma`` of shape ``(S, 1)`` score the data
with batch shape ``(S, N)``.

Credit: posteriordb (stan-dev/posteriordb, BSD-3-Clause), model ``logmesquite_logvas``
added by Oliver Järnefelt, from stan-dev/example-models ``ARM/Ch.4/mesquite_vas.stan``
(A. Gelman and J. Hill, *Data Analysis Using Regression and Multilevel/Hierarchical
Models*, Cambridge University Press, 2007).

Example::

    >>> data = pyro_dgm.data.arrays.to_tensors(mesquite_json)  # posteriordb's "mesquite"
    >>> values = {"beta": torch.zeros(7), "sigma": torch.tensor(0.3)}
    >>> poutine.trace(poutine.condition(logmesquite_logvas, data=values)).get_trace(**data)
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from pyro_dgm.models.posteriordb._stan import flat, log_positive, stan_int, stan_vector

__all__ = ["logmesquite_logvas"]


def logmesquite_logvas(*, N: Any, weight: Any, diam1: Any, diam2: Any, canopy_height: Any,
                       total_height: Any, density: Any, group: Any) -> None:
    """The log-log regression (posteriordb ``mesquite-logmesquite_logvas``).

    :param N: number of bushes (Stan ``int<lower=0> N``).
    :param weight: ``diam1``, ``diam2``, ``canopy_height``, ``total_height``, ``density``:
        positive measurements, shape ``(N,)`` each.
    :param group: the group indicator (0/1), shape ``(N,)``.
    :raises ValueError: naming the data item that does not fit.
    """
    N = stan_int("N", N, minimum=0)
    beta = pyro.sample("beta", flat(constraints.real, (7,), like=weight))
    sigma = pyro.sample("sigma", flat(constraints.positive, like=weight))
    weight, diam1, diam2, canopy_height, total_height, density, group = (
        stan_vector(name, value, N, like=beta) for name, value in (
            ("weight", weight), ("diam1", diam1), ("diam2", diam2),
            ("canopy_height", canopy_height), ("total_height", total_height),
            ("density", density), ("group", group)))
    for name, value in (("diam1", diam1), ("diam2", diam2), ("canopy_height", canopy_height)):
        log_positive(name, value)  # checks only: Stan takes the log of their products
    # transformed data
    log_weight = log_positive("weight", weight)
    log_canopy_volume = (diam1 * diam2 * canopy_height).log()
    log_canopy_area = (diam1 * diam2).log()
    log_canopy_shape = (diam1 / diam2).log()
    log_total_height = log_positive("total_height", total_height)
    log_density = log_positive("density", density)
    loc = (beta[..., 0] + beta[..., 1] * log_canopy_volume + beta[..., 2] * log_canopy_area
           + beta[..., 3] * log_canopy_shape + beta[..., 4] * log_total_height
           + beta[..., 5] * log_density + beta[..., 6] * group)
    with pyro.plate("data", N, dim=-1):
        pyro.sample("log_weight", dist.Normal(loc, sigma), obs=log_weight)
