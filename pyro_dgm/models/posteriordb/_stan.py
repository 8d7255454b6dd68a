r"""What the posteriordb translations share: Stan's data types and implicit priors in Pyro.

Stan declares every data item with a type and a size; a translation checks its keyword data
against those declarations once, at the top of the model, and raises ``ValueError`` naming
the argument that does not fit (never a silent ``NaN`` later):

- :func:`stan_int` — ``int<lower=...> N``: a Python ``int`` (a 0-d integer tensor is
  accepted) within its bounds;
- :func:`stan_vector` — ``vector[N] x`` / ``array[N] real x``: a tensor of shape ``(N,)``.
  posteriordb's JSON stores integer-valued reals as integers (``earn``, ``kid_score``, ...),
  so an integer tensor is accepted and cast to a floating dtype: the one of ``like`` (a
  parameter value, i.e. the run's dtype) or, without it, torch's default;
- :func:`stan_int_array` — ``array[N] int x``: an integer tensor of shape ``(N,)``;
- :func:`log_positive` — Stan's ``log(x)`` of positive data in ``transformed data``, with a
  ``ValueError`` naming ``x`` where Stan would stop on a ``-inf``/``NaN`` (``x <= 0``);
- :func:`flat` — Stan's implicit prior on a parameter without a ``~`` statement: uniform on
  the parameter's support (``real`` → ``constraints.real``, ``real<lower=0>`` →
  ``constraints.positive``), as a :class:`~pyro_dgm.models.posteriordb.improper.FlatPrior`:
  an improper :class:`~pyro.distributions.ImproperUniform` whose ``sample`` gives a starting
  point, so Pyro's init strategies and autoguides work on it.

Densities are measured in the constrained space (no Jacobian), as Stan's ``log_prob`` with
``jacobian=False``; :mod:`pyro.infer` adds the Jacobian of its own transforms.

Batch convention of every translation: a parameter value may carry leading batch dimensions
(vectorized chains, particles, posterior draws) to the left of one data-plate dimension, as
Pyro's plates produce them: a scalar parameter of shape ``(S, 1)`` and ``vector[K] beta`` of
shape ``(S, 1, K)``; the observations are then scored with batch shape ``(S, N)``.

Example::

    >>> N = stan_int("N", 3, minimum=0)
    >>> y = stan_vector("y", torch.tensor([1, 2, 3]), N)   # integer JSON values -> floats
    >>> y.dtype == torch.get_default_dtype()
    True
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions.constraints import Constraint

from pyro_dgm._validation import check_int
from pyro_dgm.models.posteriordb.improper import FlatPrior

__all__ = ["flat", "log_positive", "stan_int", "stan_int_array", "stan_vector"]


def stan_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Stan ``int<lower=minimum> name`` data: a Python ``int`` (``ValueError`` naming
    ``name`` otherwise)."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_floating_point():
            raise ValueError(f"{name}: expected an integer scalar, got a tensor of shape "
                             f"{tuple(value.shape)} and dtype {value.dtype}")
        value = int(value)
    return check_int(name, value, minimum=minimum)


def _as_tensor(name: str, value: Any, size: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name}: not a numeric array ({e})") from None
    if value.shape != (size,):
        raise ValueError(f"{name}: expected shape ({size},), got {tuple(value.shape)}")
    if value.dtype == torch.bool or value.is_complex():
        raise ValueError(f"{name}: expected real numbers, got dtype {value.dtype}")
    return value


def stan_vector(name: str, value: Any, size: int, *,
                like: torch.Tensor | None = None) -> torch.Tensor:
    """Stan ``vector[size] name`` (or ``array[size] real``) data as a floating tensor.

    :param name: the data item's name (for the error message).
    :param value: a tensor (or array-like) of shape ``(size,)``.
    :param size: the declared size.
    :param like: a floating tensor whose dtype an *integer* ``value`` is cast to (a parameter
        value, so integer JSON data follow the run's dtype); a floating ``value`` is kept.
    :raises ValueError: naming ``name`` if the shape differs or the values are not real.
    """
    value = _as_tensor(name, value, size)
    if not value.is_floating_point():
        dtype = like.dtype if like is not None and like.is_floating_point() \
            else torch.get_default_dtype()
        value = value.to(dtype)
    return value


def stan_int_array(name: str, value: Any, size: int) -> torch.Tensor:
    """Stan ``array[size] int name`` data: an integer tensor of shape ``(size,)``."""
    value = _as_tensor(name, value, size)
    if value.is_floating_point():
        if not bool(torch.all(value == torch.round(value))):
            raise ValueError(f"{name}: expected integers, got non-integer values")
        value = value.long()
    return value


def log_positive(name: str, value: torch.Tensor) -> torch.Tensor:
    """``log(value)`` of data that must be positive (``ValueError`` naming ``name`` if not)."""
    if not bool(torch.all(value > 0)):
        raise ValueError(f"{name}: expected positive values (its log is taken), got "
                         f"{int((~(value > 0)).sum())} values <= 0 or NaN")
    return torch.log(value)


def flat(support: Constraint, event_shape: tuple[int, ...] = (), *,
         like: torch.Tensor | None = None) -> FlatPrior:
    """Stan's implicit prior on a parameter declared with ``support``: the improper uniform
    density (``log_prob`` 0 on the support) with the parameter's ``event_shape``, as a
    :class:`~pyro_dgm.models.posteriordb.improper.FlatPrior` so that initialization can
    draw a starting point; ``like`` (a data tensor) gives that point's device and, if it is
    floating-point, its dtype."""
    return FlatPrior(support, event_shape, like=like)
