r"""A global normalizing-flow autoguide over all latent sites in unconstrained space.

All latent sites are mapped to unconstrained space and concatenated into one vector
:math:`\zeta \in \mathbb R^D` (as in Pyro's :class:`~pyro.infer.autoguide.AutoContinuous`);
the guide is

.. math::

    \zeta = m + L\, f_K \circ \dots \circ f_1(z_0), \qquad
    z_0 \sim \mathcal N(\mu, \operatorname{diag}\sigma^2),

with ``num_flows`` planar, radial, IAF or affine-coupling layers :math:`f_k`, each of which
starts at the identity map, and a learnable diagonal Gaussian :math:`(\mu, \sigma)`. Two
starts:

- ``base=None``: no outer affine map (:math:`m = 0`, :math:`L = I`); :math:`\mu` starts at
  the ``init_loc_fn`` values and :math:`\sigma` at ``init_scale``.
- ``base=`` an affine fit of the posterior, e.g. a fitted
  :class:`~pyro.infer.autoguide.AutoMultivariateNormal` (full-rank ADVI), the Gaussian of
  :meth:`~pyro.infer.autoguide.AutoLaplaceApproximation.laplace_approximation`, a fitted
  single-path :class:`~pyro_dgm.inference.Pathfinder`, a ``MultivariateNormal`` or a pair
  ``(loc, scale_tril)``. Then :math:`(m, L)` is that fit, held fixed, and the flows act on
  its standardized space :math:`z = L^{-1}(\zeta - m)`, where the posterior is roughly
  :math:`\mathcal N(0, I)` whatever the scales of the parameters; :math:`\mu = 0`,
  :math:`\sigma = 1` at the start. With every layer at the identity the guide *is* the affine
  fit (same draws from the same random numbers, same ELBO), so training starts where the
  Gaussian ended and only has to model what a Gaussian cannot.

Pyro's :class:`~pyro.infer.autoguide.AutoNormalizingFlow` fixes the base at
:math:`\mathcal N(0, I)` and makes the flows do all the work; the learnable base lets planar
×32 reach a KL on the ring target U1 well below the 0.84 nats of the fixed-base version (see
``docs/flows.md``). With an invertible flow (``"iaf"``, ``"realnvp"``) the guide scores
arbitrary values, as importance-weighted objectives with DReG gradients need.

References: Rezende & Mohamed (2015); Kingma et al. (2016); Dinh et al. (2017).

Example::

    >>> gauss = AutoMultivariateNormal(model)       # fit it by SVI first
    >>> guide = FlowGuide(model, flow="realnvp", num_flows=8, base=gauss)
    >>> svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 1e-3}), Trace_ELBO(16))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import LowerCholeskyAffine
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.nn import PyroParam

from pyro_dgm._validation import check_positive
from pyro_dgm.inference.flows.distribution import FlowDistribution
from pyro_dgm.inference.flows.stack import build_flows, check_flow_args

__all__ = ["FlowGuide", "affine_base"]


def _gaussian_factors(gauss: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale_tril)`` of a Gaussian distribution object, or ``ValueError``."""
    loc = getattr(gauss, "loc", None)
    if loc is None or not (hasattr(gauss, "scale_tril")
                           or hasattr(gauss, "covariance_matrix")):
        raise ValueError(f"base: expected a Gaussian with loc and scale_tril or "
                         f"covariance_matrix, got {type(gauss).__name__}")
    if hasattr(gauss, "scale_tril"):
        return loc, gauss.scale_tril
    return loc, torch.linalg.cholesky(gauss.covariance_matrix)


def _unpack(base: Any) -> tuple[Any, Any]:
    if isinstance(base, (tuple, list)):
        if len(base) != 2:
            raise ValueError(f"base: expected (loc, scale_tril), got {len(base)} items")
        return tuple(base)
    if hasattr(base, "get_posterior"):
        return _gaussian_factors(base.get_posterior())
    return _gaussian_factors(base)


def affine_base(base: Any, dim: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map ``(m, L)`` of a ``base=`` argument, detached, as ``like``'s dtype/device.

    :param base: a pair ``(loc, scale_tril)``; a Gaussian distribution with ``loc`` and
        ``scale_tril`` (``MultivariateNormal``, ``LowRankMultivariateNormal``) or
        ``covariance_matrix``; or a fitted guide whose ``get_posterior()`` is one of these.
    :param dim: the latent dimension it must have.
    :raises ValueError: naming ``base``: wrong kind, shape, or ``L`` not lower triangular with
        a positive diagonal.
    """
    loc, tril = _unpack(base)
    loc = torch.as_tensor(loc).detach().to(like)
    tril = torch.as_tensor(tril).detach().to(like)
    if loc.shape != (dim,) or tril.shape != (dim, dim):
        raise ValueError(f"base: loc and scale_tril must have shapes ({dim},) and "
                         f"({dim}, {dim}) (the model's latent dimension), got "
                         f"{tuple(loc.shape)} and {tuple(tril.shape)}")
    if not bool(torch.isfinite(loc).all() and torch.isfinite(tril).all()):
        raise ValueError("base: loc and scale_tril must be finite")
    if not bool((tril.triu(1) == 0).all() and (tril.diagonal() > 0).all()):
        raise ValueError("base: scale_tril must be lower triangular with a positive diagonal")
    return loc, tril


class FlowGuide(AutoContinuous):
    """Non-amortized flow guide over every latent site of ``model``.

    :param model: a Pyro model.
    :param flow: ``"planar"``, ``"radial"``, ``"iaf"`` or ``"realnvp"``.
    :param num_flows: number :math:`K \\ge 1` of flow layers.
    :param base: an affine fit of the posterior to start from and to standardize by (see
        :func:`affine_base` for what it accepts; a guide must be over the same model, with
        the same sites), or ``None``.
    :param hidden_dims: hidden widths of the IAF/coupling networks (default ``(64, 64)``).
    :param init_loc_fn: per-site initialization of the base mean (Pyro's init strategies;
        without ``base`` only).
    :param init_scale: initial base standard deviation in unconstrained space (without
        ``base`` only; with it the base starts at :math:`\\mathcal N(0, I)`).
    :param flow_kwargs: extra keyword arguments for every flow layer.
    """

    def __init__(self, model: Callable, flow: str = "realnvp", num_flows: int = 8, *,
                 base: Any = None, hidden_dims: Sequence[int] | None = None,
                 init_loc_fn: Callable = init_to_median, init_scale: float = 1.0,
                 **flow_kwargs):
        self.flow, self.num_flows = check_flow_args(flow, num_flows)
        self.hidden_dims = hidden_dims
        self.init_scale = check_positive("init_scale", init_scale)
        # read the fit now (a guide is not kept: it would become a submodule)
        self._base = None if base is None else \
            tuple(torch.as_tensor(t).detach() for t in _unpack(base))
        shapes = getattr(base, "_unconstrained_shapes", None)
        self._base_shapes = None if shapes is None else dict(shapes)
        self._flow_kwargs = flow_kwargs
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        loc = self._init_loc().detach()
        m = tril = None
        if self._base is None:
            scale = torch.full_like(loc, self.init_scale)
        else:
            shapes = self._base_shapes
            if shapes is not None and shapes != dict(self._unconstrained_shapes):
                raise ValueError(
                    f"base: a guide over other sites {shapes} than the model's "
                    f"{dict(self._unconstrained_shapes)}")
            m, tril = affine_base(self._base, self.latent_dim, loc)
            loc, scale = torch.zeros_like(loc), torch.ones_like(loc)
        # the affine fit is fixed: buffers (moved by .to(), saved in the state_dict)
        self.register_buffer("base_loc", m)
        self.register_buffer("base_scale_tril", tril)
        self.loc = torch.nn.Parameter(loc)
        self.scale = PyroParam(scale, constraint=constraints.softplus_positive)
        self.flows = build_flows(self.flow, self.latent_dim, self.num_flows,
                                 hidden_dims=self.hidden_dims, **self._flow_kwargs
                                 ).to(dtype=loc.dtype, device=loc.device)

    def get_posterior(self, *args, **kwargs) -> FlowDistribution:
        affine = None
        if self.base_loc is not None:
            affine = LowerCholeskyAffine(self.base_loc, self.base_scale_tril)
        return FlowDistribution(self.loc, self.scale, self.flows, transform=affine)

    def _loc_scale(self, *args, **kwargs):
        raise NotImplementedError("FlowGuide has no closed-form quantiles; draw samples "
                                  "with pyro.infer.Predictive instead")
