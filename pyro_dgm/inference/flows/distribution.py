r"""A diagonal Gaussian pushed through a stack of conditional flows, as a Pyro distribution.

.. math::

    z_0 \sim \mathcal N(\mu, \operatorname{diag}\sigma^2), \qquad
    y = T\big(f_K \circ \dots \circ f_1(z_0; c)\big), \qquad
    \log q(y) = \log \mathcal N(z_0; \mu, \sigma^2)
      - \sum_k \log\left|\det \frac{\partial f_k}{\partial z_{k-1}}\right|
      - \log\left|\det \frac{\partial T}{\partial z_K}\right|,

where :math:`T` is an optional bijection onto a constrained support (``biject_to``).

``log_prob`` of a value this distribution just produced by ``rsample``/``sample`` is read
from a cache (exact, and the only option for planar/radial flows); any other value is
inverted through the flows when they are all invertible, and otherwise raises
:class:`~pyro_dgm.inference.flows.base.NotInvertibleError` (a ``ValueError``) saying why.
``expand`` broadcasts the base parameters and the context, so the distribution works
inside plates and with vectorized particles.

Example::

    >>> flows = build_flows("iaf", 2, 4)
    >>> q = FlowDistribution(torch.zeros(2), torch.ones(2), flows)
    >>> z = q.rsample((10,))
    >>> q.log_prob(z).shape, q.log_prob(torch.zeros(2)).shape
    (torch.Size([10]), torch.Size([]))
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.transforms import Transform

from pyro_dgm.inference.flows.stack import FlowSequence

__all__ = ["FlowDistribution"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class FlowDistribution(TorchDistribution):
    """:math:`T(f(z_0; c))` with :math:`z_0 \\sim \\mathcal N(\\mu, \\sigma^2)` diagonal.

    :param loc: ``(..., d)`` base means; :param scale: ``(..., d)`` base scales.
    :param flows: a :class:`~pyro_dgm.inference.flows.stack.FlowSequence` on ``d``-vectors,
        or ``None`` (no flow: the diagonal Gaussian itself).
    :param context: ``(..., c)`` context, or ``None`` for unconditional flows.
    :param event_shape: shape of one value (default ``(d,)``; its size must be ``d``).
    :param transform: optional bijection applied last (e.g. ``biject_to(support)``) with
        ``domain.event_dim == len(event_shape)`` semantics of torch transforms.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, flows: FlowSequence | None,
                 context: torch.Tensor | None = None, *, event_shape=None,
                 transform: Transform | None = None, validate_args=None):
        dim = loc.shape[-1] if flows is None else flows.dim
        if loc.shape[-1:] != (dim,) or scale.shape[-1:] != (dim,):
            raise ValueError(f"loc and scale must end in the flow dimension {dim}, got "
                             f"{tuple(loc.shape)} and {tuple(scale.shape)}")
        event_shape = torch.Size((dim,) if event_shape is None else event_shape)
        if event_shape.numel() != dim:
            raise ValueError(f"event_shape {tuple(event_shape)} must hold {dim} values")
        batch = torch.broadcast_shapes(loc.shape[:-1], scale.shape[:-1])
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
        self.loc, self.scale, self.flows, self.context = loc, scale, flows, context
        self.dim = dim
        self.transform = transform
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(batch, event_shape, validate_args=validate_args)

    @property
    def support(self):
        if self.transform is not None:
            return self.transform.codomain
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        d = self.dim
        context = self.context
        if context is not None:
            context = context.expand(batch_shape + context.shape[-1:])
        return FlowDistribution(self.loc.expand(batch_shape + (d,)),
                                self.scale.expand(batch_shape + (d,)), self.flows, context,
                                event_shape=self.event_shape, transform=self.transform)

    def _base_log_prob(self, z0: torch.Tensor) -> torch.Tensor:
        u = (z0 - self.loc) / self.scale
        return (-0.5 * u * u - self.scale.log() - _HALF_LOG_2PI).sum(-1)

    def _finish(self, y: torch.Tensor, log_prob: torch.Tensor):
        value = y.reshape(y.shape[:-1] + self.event_shape)
        if self.transform is not None:
            x = self.transform(value)
            ladj = self.transform.log_abs_det_jacobian(value, x)
            extra = ladj.dim() - log_prob.dim()
            log_prob = log_prob - (ladj.sum(tuple(range(-extra, 0))) if extra else ladj)
            value = x
        return value, log_prob

    def rsample_with_log_prob(self, sample_shape=()):
        """Draw reparameterized values and their log densities in one pass."""
        sample_shape = torch.Size(sample_shape)
        shape = self._extended_shape(sample_shape)[: len(sample_shape) + len(self.batch_shape)]
        shape = shape + (self.dim,)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        z0 = self.loc + self.scale * eps
        base = (-0.5 * eps * eps - self.scale.log() - _HALF_LOG_2PI).sum(-1)
        if self.flows is None:
            y, log_prob = z0, base
        else:
            y, log_det = self.flows(z0, self.context)
            log_prob = base - log_det
        value, log_prob = self._finish(y, log_prob)
        self._cache = (value, log_prob)
        return value, log_prob

    def rsample(self, sample_shape=()):
        return self.rsample_with_log_prob(sample_shape)[0]

    def sample(self, sample_shape=()):
        with torch.no_grad():
            value, log_prob = self.rsample_with_log_prob(sample_shape)
        return value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._cache is not None and value is self._cache[0]:
            return self._cache[1]
        if self.flows is not None and not self.flows.invertible:
            self.flows.inverse(value)  # raises NotInvertibleError with the reason
        if self._validate_args:
            self._validate_sample(value)
        ladj = 0
        if self.transform is not None:
            y = self.transform.inv(value)
            ladj = self.transform.log_abs_det_jacobian(y, value)
            extra = ladj.dim() - (y.dim() - len(self.event_shape))
            if extra:
                ladj = ladj.sum(tuple(range(-extra, 0)))
            value = y
        flat = value.reshape(value.shape[: value.dim() - len(self.event_shape)] + (-1,))
        if self.flows is None:
            z0, log_det = flat, 0
        else:
            z0, log_det = self.flows.inverse(flat, self.context)
        return self._base_log_prob(z0) - log_det - ladj
