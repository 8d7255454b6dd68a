r"""posteriordb ``kidiq-kidscore_momiq``: a child's test score on the mother's IQ, in Pyro.

The model (posteriordb ``models/stan/kidscore_momiq.stan``; Gelman & Hill 2007,
ch. 3):

.. math::

    \mathrm{kid\_score}_n \sim \mathcal N(\beta_1 + \beta_2\,\mathrm{mom\_iq}_n, \sigma^2),
    \qquad p(\beta) \propto 1, \qquad \sigma \sim \mathrm{HalfCauchy}(2.5).

Sites (Stan statement → Pyro site):

- ``vector[2] beta`` (no ``~``: Stan's flat prior) → ``beta``, event shape ``(2,)``,
  :class:`~pyro.distributions.ImproperUniform` on the reals (a
  :class:`~pyro_dgm.models.posteriordb.improper.FlatPrior`, which initialization can draw
  a starting point from);
- ``sigma ~ cauchy(0, 2.5)`` on ``real<lower=0>`` → ``sigma`` with
  :class:`~pyro.distributions.HalfCauchy` ``(2.5)`` (twice Stan's unnormalized density on
  :math:`\sigma > 0`: a constant), measured on the positive reals in the constrained space
  (no Jacobian);
- ``kid_score ~ normal(...)`` → the observed site ``kid_score`` in the plate ``data``
  (size ``N``).

Data: the keyword arguments are the Stan data block's. posteriordb's data file ``kidiq`` also
holds ``mom_hs``, ``mom_hs_new`` and ``mom_iq_new`` (used by other models of the same data);
they are accepted and ignored, so the whole file can be passed. ``kid_score`` is stored as
integers; integer tensors are cast to the parameters' dtype. Stan's bounds ``[0, 200]`` on the
data are checked.

Batches: ``beta`` of shape ``(S, 1, 2)`` and ``sigma`` of shape ``(S, 1)`` (leading batch
dimensions left of the data plate) score the data with batch shape ``(S, N)``.

Credit: posteriordb (stan-dev/posteriordb, BSD-3-Clause), model ``kidscore_momiq`` added by
Oliver Järnefelt, from stan-dev/example-models ``ARM/Ch.3/kidscore_momiq.stan``
(A. Gelman and J. Hill, *Data Analysis Using Regression and Multilevel/Hierarchical
Models*, Cambridge University Press, 2007).

Example::

    >>> values = {"beta": torch.tensor([26.0, 0.6]), "sigma": torch.tensor(18.0)}
    >>> data = {"N": 2, "kid_score": torch.tensor([65.0, 98.0]),
    ...         "mom_iq": torch.tensor([121.1, 89.4])}
    >>> poutine.trace(poutine.condition(kidscore_momiq, data=values)).get_trace(**data)
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_dgm.models.posteriordb._stan import flat, stan_int, stan_vector

__all__ = ["kidscore_momiq"]


def _check_bounds(name: str, value: torch.Tensor, lower: float, upper: float) -> None:
    if not bool(torch.all((value >= lower) & (value <= upper))):
        raise ValueError(f"{name}: Stan declares it in [{lower:g}, {upper:g}]; some values "
                         "are outside")


def kidscore_momiq(*, N: Any, kid_score: Any, mom_iq: Any, mom_hs: Any = None,
                   mom_hs_new: Any = None, mom_iq_new: Any = None) -> None:
    """The one-predictor regression (posteriordb ``kidiq-kidscore_momiq``).

    :param N: number of children (Stan ``int<lower=0> N``).
    :param kid_score: test scores, shape ``(N,)``, in ``[0, 200]``.
    :param mom_iq: the mothers' IQs, shape ``(N,)``, in ``[0, 200]``.
    :param mom_hs: ``mom_hs_new``, ``mom_iq_new``: in posteriordb's ``kidiq`` data file, not
        used by this model (ignored).
    :raises ValueError: naming the data item that does not fit Stan's declarations.
    """
    del mom_hs, mom_hs_new, mom_iq_new  # other models' data in the same file
    N = stan_int("N", N, minimum=0)
    beta = pyro.sample("beta", flat(constraints.real, (2,), like=kid_score))
    kid_score = stan_vector("kid_score", kid_score, N, like=beta)
    mom_iq = stan_vector("mom_iq", mom_iq, N, like=beta)
    _check_bounds("kid_score", kid_score, 0, 200)
    _check_bounds("mom_iq", mom_iq, 0, 200)
    sigma = pyro.sample("sigma", dist.HalfCauchy(mom_iq.new_tensor(2.5)))
    loc = beta[..., 0] + beta[..., 1] * mom_iq
    with pyro.plate("data", N, dim=-1):
        pyro.sample("kid_score", dist.Normal(loc, sigma), obs=kid_score)
