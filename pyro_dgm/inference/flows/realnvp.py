r"""Affine coupling layer of Real NVP (Dinh, Sohl-Dickstein & Bengio, 2017, "Density
estimation using Real NVP").

The coordinates are split into a kept part :math:`a` and a transformed part :math:`b`:

.. math::

    y_a = z_a, \qquad y_b = z_b \odot \exp\big(s(z_a, c)\big) + t(z_a, c), \qquad
    \log\left|\det \frac{\partial y}{\partial z}\right| = \sum_j s_j(z_a, c),

with :math:`(s, t)` from one MLP over the kept part and the context :math:`c`. The inverse
is closed-form, :math:`z_b = (y_b - t(y_a, c)) \odot \exp(-s(y_a, c))`, so coupling flows
score arbitrary values. Stacked layers alternate the split (``parity``) so every
coordinate gets transformed; :math:`s` is soft-clamped,
:math:`s = s_{max}\tanh(\tilde s / s_{max})`, so one layer scales by at most
:math:`e^{\pm s_{max}}` (a bounded Jacobian). The network's last layer starts at zero
(:math:`t = 0`, :math:`s = 0`): a fresh layer is the identity map.

Example::

    >>> flow = AffineCoupling(2, parity=1)
    >>> y, log_det = flow(torch.randn(4, 2))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_dgm._shared import mlp
from pyro_dgm.inference.flows.base import ConditionalFlow, soft_clamp

__all__ = ["AffineCoupling"]


class AffineCoupling(ConditionalFlow):
    """Real NVP affine coupling layer.

    :param dim: dimension :math:`d`; :param context_dim: context size (0: no context).
    :param hidden_dims: hidden widths of the coupling network (default ``(64, 64)``).
    :param parity: 0 keeps the first ``d // 2`` coordinates, 1 the last ``d // 2``
        (coordinate order reversed); alternate it between stacked layers.
    :param log_scale_bound: soft bound :math:`s_{max}` on :math:`|s_j|`.
    """

    invertible = True

    def __init__(self, dim: int, context_dim: int = 0, *,
                 hidden_dims: Sequence[int] = (64, 64), parity: int = 0,
                 log_scale_bound: float = 3.0):
        super().__init__(dim, context_dim)
        d = self.dim
        perm = torch.arange(d) if parity % 2 == 0 else torch.arange(d).flip(0)
        self.register_buffer("kept", perm[: d // 2].clone(), persistent=False)
        self.register_buffer("changed", perm[d // 2:].clone(), persistent=False)
        self.register_buffer("unperm", torch.argsort(perm), persistent=False)
        self.num_kept = d // 2
        in_dim = max(self.num_kept + self.context_dim, 1)  # a constant input when empty
        # a zero last layer: shift 0 and log-scale 0, the identity map at the start
        self.net = mlp([in_dim, *hidden_dims, 2 * (d - self.num_kept)], nn.ReLU, out_scale=0.0)
        self.log_scale_bound = float(log_scale_bound)

    def _shift_log_scale(self, kept, context):
        inputs = [kept] if self.num_kept else []
        if context is not None:
            batch = torch.broadcast_shapes(kept.shape[:-1], context.shape[:-1])
            inputs = [t.expand(batch + t.shape[-1:]) for t in inputs + [context]]
        x = torch.cat(inputs, -1) if inputs else kept.new_ones(kept.shape[:-1] + (1,))
        shift, raw = self.net(x).chunk(2, dim=-1)
        return shift, soft_clamp(raw, self.log_scale_bound)

    def _merge(self, kept, changed):
        batch = torch.broadcast_shapes(kept.shape[:-1], changed.shape[:-1])
        both = torch.cat([kept.expand(batch + kept.shape[-1:]), changed], -1)
        return both.index_select(-1, self.unperm)

    def forward(self, z, context=None):
        context = self._check_context(context)
        kept = z.index_select(-1, self.kept)
        shift, log_scale = self._shift_log_scale(kept, context)
        changed = z.index_select(-1, self.changed) * log_scale.exp() + shift
        return self._merge(kept, changed), log_scale.sum(-1)

    def inverse(self, y, context=None):
        context = self._check_context(context)
        kept = y.index_select(-1, self.kept)
        shift, log_scale = self._shift_log_scale(kept, context)
        changed = (y.index_select(-1, self.changed) - shift) * torch.exp(-log_scale)
        return self._merge(kept, changed), log_scale.sum(-1)
