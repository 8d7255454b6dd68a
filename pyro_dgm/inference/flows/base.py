r"""The conditional-flow contract shared by every flow in :mod:`pyro_dgm.inference.flows`.

A *conditional flow* is a map :math:`y = f(z; c)` on :math:`\mathbb R^d` that may depend on
a context vector :math:`c` (an encoder's output in an amortized guide; absent in a global
guide). Every flow implements

- ``forward(z, context=None) -> (y, log|det ∂y/∂z|)``, batched over all leading dims of
  ``z`` (the context broadcasts against them);
- ``inverse(y, context=None) -> (z, log|det ∂y/∂z|)`` (the log-determinant of the
  *forward* map at the recovered ``z``) when the flow can be inverted, else it raises
  :class:`NotInvertibleError`;
- the class flag :attr:`ConditionalFlow.invertible`: whether the flow can score values it
  did not produce itself (the log density of an arbitrary value needs the inverse).

Planar and radial flows (Rezende & Mohamed, 2015) are invertible in principle but have no
closed-form inverse, so here (as in Pyro) they only score their own samples; IAF (Kingma et
al., 2016) and affine coupling (Dinh et al., 2017) invert exactly.

Example::

    >>> flow = AffineCoupling(dim=2, context_dim=0, hidden_dims=(16,), parity=0)
    >>> y, ladj = flow(torch.randn(5, 2))
    >>> z, _ = flow.inverse(y)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from pyro_dgm._validation import check_int

__all__ = ["ConditionalFlow", "NotInvertibleError", "soft_clamp"]


class NotInvertibleError(ValueError):
    """Raised when a flow without an inverse is asked to score or invert a value."""


def soft_clamp(x: torch.Tensor, bound: float) -> torch.Tensor:
    """Smoothly squash ``x`` into ``(-bound, bound)``: ``bound * tanh(x / bound)``."""
    return bound * torch.tanh(x / bound)


class ConditionalFlow(nn.Module):
    """Base class: a (possibly context-dependent) map of ``dim``-vectors.

    :param dim: the dimension :math:`d` of the vectors it maps.
    :param context_dim: size of the context vector (0: the flow ignores any context and
        its parameters are free).
    """

    #: whether :meth:`inverse` exists, i.e. the flow can score arbitrary values
    invertible: ClassVar[bool] = True

    def __init__(self, dim: int, context_dim: int = 0):
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        self.context_dim = check_int("context_dim", context_dim, minimum=0)

    def _check_context(self, context: torch.Tensor | None) -> torch.Tensor | None:
        if self.context_dim == 0:
            return None
        if context is None or context.shape[-1] != self.context_dim:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"{type(self).__name__} needs a context of size "
                             f"{self.context_dim} in its last dim, got {got}")
        return context

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(y, log|det ∂y/∂z|)``; the log-det has shape ``z.shape[:-1]``."""
        raise NotImplementedError

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(z, log|det ∂y/∂z|)`` with ``forward(z) == y``."""
        raise NotInvertibleError(
            f"{type(self).__name__} has no inverse: it can only score the values it "
            "sampled itself (use an invertible flow such as 'iaf' or 'realnvp' to score "
            "arbitrary values)")

    def log_abs_det_jacobian(self, z: torch.Tensor,
                             context: torch.Tensor | None = None) -> torch.Tensor:
        """``log|det ∂f(z)/∂z|`` (shape ``z.shape[:-1]``)."""
        return self(z, context)[1]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}"
