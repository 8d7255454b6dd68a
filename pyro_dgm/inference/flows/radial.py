r"""Radial flow (Rezende & Mohamed, 2015).

.. math::

    f(z) = z + \beta\, h(\alpha, r)\,(z - z_0), \qquad h = \frac{1}{\alpha + r},\quad
    r = \lVert z - z_0 \rVert,

.. math::

    \log\left|\det \frac{\partial f}{\partial z}\right|
      = (d - 1)\log(1 + \beta h) + \log\Big(1 + \beta h + \beta h'(r)\, r\Big),
      \qquad h' = -\frac{1}{(\alpha + r)^2}.

It contracts or expands space around the centre :math:`z_0`. The map is invertible iff
:math:`\beta \ge -\alpha`; the free parameters are mapped as
:math:`\alpha = \operatorname{softplus}(\tilde\alpha) > 0` and
:math:`\beta = -\alpha + \operatorname{softplus}(\tilde\beta) > -\alpha`. With a context,
a linear head adds offsets to :math:`(z_0, \tilde\alpha, \tilde\beta)`.

Like :class:`~pyro_dgm.inference.flows.planar.Planar` it has no closed-form inverse
(:attr:`invertible` is ``False``).

Example::

    >>> flow = Radial(2)
    >>> y, log_det = flow(torch.randn(10, 2))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pyro_dgm.inference.flows.base import ConditionalFlow

__all__ = ["Radial"]

_SOFTPLUS_INV_1 = math.log(math.e - 1)  # softplus(x) = 1


class Radial(ConditionalFlow):
    """Radial flow around a learnable centre :math:`z_0`.

    :param dim: dimension :math:`d`; :param context_dim: context size (0: free parameters).
    :param init_scale: scale of the random initial centre; :math:`\\beta` starts at 0
        exactly (and the context head at zero), so a fresh layer is the identity map.
    """

    invertible = False

    def __init__(self, dim: int, context_dim: int = 0, *, init_scale: float = 0.01):
        super().__init__(dim, context_dim)
        d = self.dim
        self.z0 = nn.Parameter(torch.randn(d) * init_scale)
        self.alpha_raw = nn.Parameter(torch.full((), _SOFTPLUS_INV_1))
        # beta = softplus(beta_raw) - softplus(alpha_raw) = 0 exactly: the identity
        self.beta_raw = nn.Parameter(torch.full((), _SOFTPLUS_INV_1))
        if self.context_dim:
            self.head = nn.Linear(self.context_dim, d + 2)
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.zero_()

    def parameters_for(self, context: torch.Tensor | None = None):
        """Return ``(z0, alpha, beta)`` (broadcast over the context's batch dims)."""
        z0, a, b = self.z0, self.alpha_raw, self.beta_raw
        context = self._check_context(context)
        if context is not None:
            dz, da, db = self.head(context).split([self.dim, 1, 1], dim=-1)
            z0, a, b = z0 + dz, a + da.squeeze(-1), b + db.squeeze(-1)
        alpha = F.softplus(a)
        beta = F.softplus(b) - alpha
        return z0, alpha, beta

    def forward(self, z, context=None):
        z0, alpha, beta = self.parameters_for(context)
        diff = z - z0
        r = torch.linalg.vector_norm(diff, dim=-1)
        h = 1 / (alpha + r)
        beta_h = beta * h
        y = z + beta_h.unsqueeze(-1) * diff
        # 1 + beta*h + beta*h'*r = 1 + beta*alpha/(alpha + r)^2
        log_det = (self.dim - 1) * torch.log1p(beta_h) + torch.log1p(beta * alpha * h * h)
        return y, log_det
