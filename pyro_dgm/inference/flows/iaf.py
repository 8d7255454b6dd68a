r"""Inverse autoregressive flow (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling,
2016, "Improved Variational Inference with Inverse Autoregressive Flow").

.. math::

    y_i = \mu_i(z_{<i}, c) + \sigma_i(z_{<i}, c)\, z_i, \qquad
    \log\left|\det \frac{\partial y}{\partial z}\right| = \sum_i \log \sigma_i,

where :math:`(\mu, \log\sigma)` come from one pass of a MADE network (Germain et al., 2015)
over :math:`z` in a given variable order, with the context :math:`c` feeding the first
hidden layer without a mask (it may influence every output). Sampling is one network
pass; the inverse needs :math:`d` passes (one per variable, in order), so IAF can score
arbitrary values. :math:`\log\sigma` is soft-clamped,
:math:`\log\sigma = s\tanh(\widetilde{\log\sigma} / s)` (a bounded Jacobian), and the
MADE's last layer starts at zero (:math:`\mu = 0`, :math:`\log\sigma = 0`): a fresh layer is
the identity map.

Example::

    >>> flow = IAF(3, hidden_dims=(32, 32))
    >>> y, log_det = flow(torch.randn(4, 3))
    >>> z, _ = flow.inverse(y)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_dgm.inference.flows.base import ConditionalFlow, soft_clamp

__all__ = ["IAF", "MADE"]


class MADE(nn.Module):
    """Masked autoencoder: output block ``k`` at position ``i`` depends on inputs before
    ``i`` in ``order`` (and on the unmasked context).

    :param dim: input size :math:`d`; :param hidden_dims: hidden layer widths;
    :param num_outputs: outputs per input position; :param context_dim: context size;
    :param order: a permutation of ``range(dim)`` (default: the identity).
    :param out_scale: factor on the last layer's random weights (0, the default: a zero last
        layer, all outputs 0 at the start).
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int], num_outputs: int = 2,
                 context_dim: int = 0, order: torch.Tensor | None = None,
                 out_scale: float = 0.0):
        super().__init__()
        self.dim, self.num_outputs = dim, num_outputs
        order = torch.arange(dim) if order is None else torch.as_tensor(order)
        degree_in = torch.empty(dim, dtype=torch.long)
        degree_in[order] = torch.arange(1, dim + 1)
        self.register_buffer("order", order.clone(), persistent=False)
        degrees = [degree_in]
        for h in hidden_dims:
            degrees.append(torch.arange(h) % max(dim - 1, 1) + 1 if dim > 1
                           else torch.zeros(h, dtype=torch.long))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (d_in, d_out) in enumerate(zip(degrees[:-1], degrees[1:], strict=True)):
            layer = nn.Linear(len(d_in), len(d_out))
            self.weights.append(layer.weight)
            self.biases.append(layer.bias)
            self.register_buffer(f"mask{i}", (d_out[:, None] >= d_in[None, :]).to(
                layer.weight.dtype), persistent=False)
        last = nn.Linear(len(degrees[-1]), dim * num_outputs)
        with torch.no_grad():
            last.weight.mul_(out_scale)
            last.bias.zero_()
        self.weights.append(last.weight)
        self.biases.append(last.bias)
        out_degree = degree_in.repeat(num_outputs)
        self.register_buffer(f"mask{len(hidden_dims)}", (
            out_degree[:, None] > degrees[-1][None, :]).to(last.weight.dtype),
            persistent=False)
        self.context = (nn.Linear(context_dim, len(degrees[1]) if hidden_dims
                                  else dim * num_outputs, bias=False)
                        if context_dim else None)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``(..., num_outputs, dim)``."""
        h = z
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = F.linear(h, w * getattr(self, f"mask{i}"), b)
            if i == 0 and self.context is not None:
                h = h + self.context(context)
            if i < last:
                h = F.relu(h)
        return h.unflatten(-1, (self.num_outputs, self.dim))


class IAF(ConditionalFlow):
    """Affine inverse autoregressive flow.

    :param dim: dimension :math:`d`; :param context_dim: context size (0: no context).
    :param hidden_dims: widths of the MADE's hidden layers (default ``(64, 64)``).
    :param reverse: use the reversed variable order (alternate it between stacked flows).
    :param log_scale_bound: soft bound :math:`s` on :math:`|\\log\\sigma_i|`.
    """

    invertible = True

    def __init__(self, dim: int, context_dim: int = 0, *,
                 hidden_dims: Sequence[int] = (64, 64), reverse: bool = False,
                 log_scale_bound: float = 3.0):
        super().__init__(dim, context_dim)
        order = torch.arange(self.dim)
        if reverse:
            order = order.flip(0)
        self.made = MADE(self.dim, list(hidden_dims), 2, self.context_dim, order)
        self.log_scale_bound = float(log_scale_bound)

    def _shift_log_scale(self, z, context):
        shift, raw = self.made(z, context).unbind(-2)
        return shift, soft_clamp(raw, self.log_scale_bound)

    def forward(self, z, context=None):
        context = self._check_context(context)
        shift, log_scale = self._shift_log_scale(z, context)
        return shift + log_scale.exp() * z, log_scale.sum(-1)

    def inverse(self, y, context=None):
        context = self._check_context(context)
        z = torch.zeros_like(y)
        if context is not None:  # the context may carry more batch dims than y
            z = z.expand(torch.broadcast_shapes(z.shape, context.shape[:-1] + (1,))).clone()
        for i in self.made.order.tolist():
            shift, log_scale = self._shift_log_scale(z, context)
            z = z.clone()
            z[..., i] = (y[..., i] - shift[..., i]) * torch.exp(-log_scale[..., i])
        shift, log_scale = self._shift_log_scale(z, context)
        return z, log_scale.sum(-1)
