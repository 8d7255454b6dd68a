r"""Planar flow (Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows").

.. math::

    f(z) = z + \hat u \tanh(w^\top z + b), \qquad
    \log\left|\det \frac{\partial f}{\partial z}\right|
      = \log\left|1 + \hat u^\top \psi(z)\right|,\quad
    \psi(z) = \big(1 - \tanh^2(w^\top z + b)\big)\, w .

The map is invertible iff :math:`w^\top \hat u \ge -1`. The free vector :math:`u` is
mapped to

.. math::

    \hat u = u + \big(m(w^\top u) - w^\top u\big) \frac{w}{\lVert w\rVert^2}, \qquad
    m(a) = -1 + \operatorname{softplus}\big(a + \log(e - 1)\big),

so that :math:`w^\top \hat u = m(w^\top u) > -1` whatever values the optimizer gives the
parameters, and the log-determinant is computed as
:math:`\log(1 + (1 - \tanh^2) \, m(w^\top u))`, which stays finite. The paper's
:math:`m(a) = -1 + \operatorname{softplus}(a)` is shifted by :math:`\log(e - 1)` so that
:math:`m(0) = 0`: then :math:`u = 0` gives :math:`\hat u = 0`, the identity map, which is
where a fresh layer starts (``init_scale=0``).

With ``context_dim > 0`` (amortized guides) the encoder's context produces offsets to
:math:`(u, w, b)` through a linear head, as in the paper where the inference network
outputs the flow parameters.

The inverse has no closed form, so the flow cannot score values it did not sample
(:attr:`invertible` is ``False``).

Example::

    >>> flow = Planar(2)
    >>> y, log_det = flow(torch.randn(10, 2))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pyro_dgm.inference.flows.base import ConditionalFlow

__all__ = ["Planar"]

_SOFTPLUS_INV_1 = math.log(math.e - 1)  # softplus(x) = 1, so m(0) = 0


class Planar(ConditionalFlow):
    """Planar flow :math:`z + \\hat u \\tanh(w^\\top z + b)` with the invertibility fix.

    :param dim: dimension :math:`d`.
    :param context_dim: context size (0 for free parameters).
    :param init_scale: standard deviation of a random initial :math:`u` and scale of the
        context head's initial weights (0, the default: :math:`u = 0` and a zero head, the
        identity map); :math:`w` starts with unit norm in expectation.
    """

    invertible = False

    def __init__(self, dim: int, context_dim: int = 0, *, init_scale: float = 0.0):
        super().__init__(dim, context_dim)
        d = self.dim
        self.u = nn.Parameter(torch.randn(d) * init_scale)
        self.w = nn.Parameter(torch.randn(d) / d ** 0.5)
        self.b = nn.Parameter(torch.zeros(()))
        if self.context_dim:
            self.head = nn.Linear(self.context_dim, 2 * d + 1)
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.zero_()

    def parameters_for(self, context: torch.Tensor | None = None):
        """Return ``(u_hat, w, b, w·u_hat)`` (broadcast over the context's batch dims)."""
        u, w, b = self.u, self.w, self.b
        context = self._check_context(context)
        if context is not None:
            du, dw, db = self.head(context).split([self.dim, self.dim, 1], dim=-1)
            u, w, b = u + du, w + dw, b + db.squeeze(-1)
        wu = (w * u).sum(-1, keepdim=True)
        w_sq = (w * w).sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        m = F.softplus(wu + _SOFTPLUS_INV_1) - 1
        u_hat = u + (m - wu) * w / w_sq
        return u_hat, w, b, m.squeeze(-1)

    def forward(self, z, context=None):
        u_hat, w, b, wu_hat = self.parameters_for(context)
        h = torch.tanh((z * w).sum(-1) + b)
        y = z + u_hat * h.unsqueeze(-1)
        log_det = torch.log1p((1 - h * h) * wu_hat)
        return y, log_det
