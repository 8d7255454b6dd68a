r"""posteriordb ``nes2000-nes``: party identification on ideology, race, age group,
education, gender and income (National Election Study 2000), in Pyro.

The model (posteriordb ``models/stan/nes.stan``; Gelman & Hill 2007, ch. 4):

Flat priors: :math:`p(\beta, \sigma) \propto 1` on :math:`\mathbb R^9 \times (0, \infty)`.

Sites (Stan statement → Pyro site):

- ``vector[9] beta`` (no ``~``) → ``beta``, event shape ``(9,)``,
  :class:`~pyro.distributions.ImproperUniform` on the reals (a
  :class:`~pyro_dgm.models.posteriordb.improper.FlatPrior`, which initialization can draw
  a starting point from);
- ``real<lower=0> sigma`` (no ``~``) → ``sigma``, ``ImproperUniform`` on the positive reals,
  measured in the constrained space (no Jacobian);
- ``partyid7 ~ normal(...)`` → the observed site ``partyid7`` in the plate ``data``
  (size ``N``).

The age indicators are computed from the integer array ``age_discrete`` with one vectorized
comparison per level (the Stan loop over ``n``). posteriordb stores every column as integers
(``race_adj`` also has halves); integer tensors for Stan's ``vector`` data are cast to the
parameters' dtype. The data file ``nes2000`` also holds ``year`` (all 2000), which this
model does not use: it is accepted and ignored, so the whole file can be passed.

Batches: ``beta`` of shape ``(S, 1, 9)`` and ``sigma`` of shape ``(S, 1)`` score the data
with batch shape ``(S, N)``.

Credit: posteriordb (stan-dev/posteriordb, BSD-3-Clause), model ``nes`` added by Oliver
Järnefelt, from stan-dev/example-models ``ARM/Ch.4/nes.stan`` (A. Gelman and J. Hill,
*Data Analysis Using Regression and Multilevel/Hierarchical Models*, Cambridge University
Press, 2007).

Example::

    >>> data = pyro_dgm.data.arrays.to_tensors(nes2000_json)  # posteriordb's "nes2000"
    >>> values = {"beta": torch.zeros(9), "sigma": torch.tensor(1.5)}
    >>> poutine.trace(poutine.condition(nes, data=values)).get_trace(**data)
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from pyro_dgm.models.posteriordb._stan import flat, stan_int, stan_int_array, stan_vector

__all__ = ["nes"]


def nes(*, N: Any, partyid7: Any, real_ideo: Any, race_adj: Any, educ1: Any, gender: Any,
        income: Any, age_discrete: Any, year: Any = None) -> None:
    """The multiple regression (posteriordb ``nes2000-nes``).

    :param N: number of respondents (Stan ``int<lower=0> N``).
    :param partyid7: party identification 1-7, shape ``(N,)`` (the response).
    :param real_ideo: ``race_adj``, ``educ1``, ``gender``, ``income``: predictors, shape
        ``(N,)`` each.
    :param age_discrete: age group 1-4, an integer tensor of shape ``(N,)``.
    :param year: in posteriordb's ``nes2000`` data file, not used by this model (ignored).
    :raises ValueError: naming the data item that does not fit Stan's declarations.
    """
    del year  # in the data file, not in the Stan data block
    N = stan_int("N", N, minimum=0)
    beta = pyro.sample("beta", flat(constraints.real, (9,), like=partyid7))
    sigma = pyro.sample("sigma", flat(constraints.positive, like=partyid7))
    partyid7, real_ideo, race_adj, educ1, gender, income = (
        stan_vector(name, value, N, like=beta) for name, value in (
            ("partyid7", partyid7), ("real_ideo", real_ideo), ("race_adj", race_adj),
            ("educ1", educ1), ("gender", gender), ("income", income)))
    age_discrete = stan_int_array("age_discrete", age_discrete, N)
    # transformed data: age as a factor
    age30_44, age45_64, age65up = ((age_discrete == level).to(partyid7.dtype)
                                   for level in (2, 3, 4))
    loc = (beta[..., 0] + beta[..., 1] * real_ideo + beta[..., 2] * race_adj
           + beta[..., 3] * age30_44 + beta[..., 4] * age45_64 + beta[..., 5] * age65up
           + beta[..., 6] * educ1 + beta[..., 7] * gender + beta[..., 8] * income)
    with pyro.plate("data", N, dim=-1):
        pyro.sample("partyid7", dist.Normal(loc, sigma), obs=partyid7)
