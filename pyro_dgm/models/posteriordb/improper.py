r"""Stan's implicit flat prior on a constrained parameter, usable by Pyro's inference.

A Stan parameter without a ``~`` statement of its own (``positive_ordered[K] phi`` whose
density comes from ``target +=`` terms, ``real<lower=0> sigma`` with no prior) has the
improper uniform density on its declared support. Pyro's
:class:`~pyro.distributions.ImproperUniform` states exactly that (``log_prob`` zero on the
support, the support drives :func:`torch.distributions.biject_to` in HMC/NUTS and the
autoguides), but its ``sample`` raises ``NotImplementedError``, and Pyro's initialization
strategies (``init_to_uniform``, ``init_to_median``, ``init_to_mean`` and their fallbacks)
and every autoguide's prototype trace call ``sample``: NUTS on a model with a bare
``ImproperUniform`` site stops at initialization.

:class:`FlatPrior` is an ``ImproperUniform`` (same support, same zero ``log_prob``) whose
``sample`` returns a *starting point*, not a draw from any distribution:

.. math::

    x = T(u), \qquad u_i \sim \mathcal U(-2, 2), \qquad T = \text{biject\_to(support)},

the same rule as ``init_to_uniform`` in the unconstrained coordinates; it carries the dtype
and device of the data it is built ``like``, so starting points follow the run's dtype.
Prior predictive draws of such a site are therefore meaningless (the prior is improper);
the posterior is unaffected.

Example::

    >>> import torch
    >>> from pyro.distributions import constraints
    >>> d = FlatPrior(constraints.positive_ordered_vector, (2,), like=torch.zeros(3).double())
    >>> x = d.sample()
    >>> x.dtype, bool(x[1] > x[0] > 0), float(d.log_prob(x))
    (torch.float64, True, 0.0)
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.constraints import Constraint
from torch import Tensor
from torch.distributions import biject_to

__all__ = ["FlatPrior"]

_RADIUS = 2.0


class FlatPrior(dist.ImproperUniform):
    """:class:`~pyro.distributions.ImproperUniform` on ``support`` that can be sampled for
    initialization (see the module docstring).

    :param support: the parameter's constraint (``constraints.positive``,
        ``constraints.simplex``, ``constraints.positive_ordered_vector``, ...).
    :param event_shape: the parameter's shape (Stan's declared dimensions).
    :param like: a tensor whose device (and dtype, if floating-point; else torch's default)
        the samples and log densities take; anything else: torch's defaults.
    :param batch_shape: batch shape (``()`` for one parameter; plates expand it).
    """

    def __init__(self, support: Constraint, event_shape: tuple[int, ...] = (), *,
                 like: Any = None, batch_shape: tuple[int, ...] = ()) -> None:
        if not torch.is_tensor(like):
            like = torch.zeros(())
        self._like = (like.new_zeros(()) if like.is_floating_point()
                      else torch.zeros((), device=like.device))
        super().__init__(support, torch.Size(batch_shape), torch.Size(event_shape))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FlatPrior, _instance)
        new._like = self._like
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(value.shape[:value.dim() - self.event_dim],
                                       self.batch_shape)
        return value.new_zeros(shape)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        transform = biject_to(self.support)
        shape = torch.Size(sample_shape) + self.batch_shape \
            + transform.inverse_shape(self.event_shape)
        u = torch.rand(shape, dtype=self._like.dtype, device=self._like.device)
        return transform((2 * u - 1) * _RADIUS)
