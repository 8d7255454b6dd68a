r"""A one-dimensional Gaussian mixture with discrete assignments and ordered means.

.. math::

    w \sim \mathrm{Dirichlet}(\alpha 1_K), \qquad
    \mu \sim \mathcal N(m_0, s_0^2)^{\otimes K} \text{ restricted to } \mu_1 < \dots < \mu_K,
    \qquad \sigma_k \sim \mathrm{LogNormal}(\log s_\sigma, 1),

    z_n \sim \mathrm{Categorical}(w), \qquad x_n \mid z_n \sim \mathcal N(\mu_{z_n},
    \sigma_{z_n}^2), \qquad n = 1..N.

The ordering of the means removes the :math:`K!` relabelings of the posterior (label
switching, Stephens 2000; Jasra, Holmes & Stephens 2005), so posterior means of ``locs`` are
meaningful and different samplers can be compared on them. The prior of the ordered means
is :math:`K!\prod_k \mathcal N(\mu_k; m_0, s_0^2)` (:class:`SortedNormal`); its support is
``ordered_vector``, which Pyro maps to unconstrained space with ``OrderedTransform``.

The assignment site ``z`` is marked for parallel enumeration, so the same program serves

- :class:`~pyro_dgm.inference.Gibbs`, which draws all assignments exactly at once, and
- NUTS (and ``TraceEnum_ELBO``), which sum the assignments out.

Example::

    >>> mix = GaussianMixture(3)
    >>> data = mix.simulate(300, seed=0)
    >>> gibbs = MCMC(Gibbs(mix), num_samples=1000, num_chains=8, chain_method="vectorized")
    >>> gibbs.run(data.x)
    >>> nuts = pyro.infer.MCMC(NUTS(mix, max_plate_nesting=1), num_samples=500)
    >>> nuts.run(data.x)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.nn import PyroModule
from pyro.ops.indexing import Vindex

from pyro_dgm._validation import check_int, check_positive

__all__ = ["GaussianMixture", "MixtureData", "SortedNormal"]


class SortedNormal(TorchDistribution):
    r"""``size`` iid :math:`\mathcal N(\mathrm{loc}, \mathrm{scale}^2)` draws in increasing
    order: density :math:`K!\prod_k \mathcal N(x_k)` on :math:`x_1 < \dots < x_K`."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.ordered_vector
    has_rsample = False

    def __init__(self, loc, scale, size: int, validate_args=None):
        self.size = check_int("size", size, minimum=1)
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc),
                                                       torch.as_tensor(scale))
        super().__init__(self.loc.shape, torch.Size([self.size]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SortedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.size = self.size
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        super(SortedNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _base(self):
        return dist.Normal(self.loc.unsqueeze(-1), self.scale.unsqueeze(-1))

    def sample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        with torch.no_grad():
            return self._base().expand(shape).sample().sort(-1).values

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return self._base().log_prob(value).sum(-1) + math.lgamma(self.size + 1)


class MixtureData(NamedTuple):
    """Synthetic mixture data and the parameters that generated it."""

    x: torch.Tensor
    z: torch.Tensor
    weights: torch.Tensor
    locs: torch.Tensor
    scales: torch.Tensor


class GaussianMixture(PyroModule):
    r"""Bayesian 1-D Gaussian mixture with ``num_components`` components.

    Sample sites: ``weights`` (K,), ``locs`` (K,) ordered, ``scales`` (K,), and inside the
    plate ``"data"``: the assignments ``z`` (Categorical, enumerable) and the observed ``x``.

    :param num_components: :math:`K \ge 1`.
    :param concentration: Dirichlet concentration :math:`\alpha` of the weights.
    :param loc_loc: :math:`m_0`; :param loc_scale: :math:`s_0` of the ordered means' prior.
    :param scale_scale: median :math:`s_\sigma` of the component scales' prior.

    Call it as ``model(x)`` for data ``x`` of shape ``(N,)`` (or ``(C, N)``: one data set
    per chain of a vectorized run), or ``model(num_data=N)`` for the prior predictive.
    """

    def __init__(self, num_components: int, *, concentration: float = 1.0,
                 loc_loc: float = 0.0, loc_scale: float = 3.0, scale_scale: float = 1.0,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.num_components = check_int("num_components", num_components, minimum=1)
        check_positive("concentration", concentration)
        check_positive("loc_scale", loc_scale)
        check_positive("scale_scale", scale_scale)

        def buffer(value):
            return torch.tensor(float(value), dtype=dtype)

        self.register_buffer("concentration", buffer(concentration))
        self.register_buffer("loc_loc", buffer(loc_loc))
        self.register_buffer("loc_scale", buffer(loc_scale))
        self.register_buffer("log_scale_scale", buffer(math.log(scale_scale)))

    def forward(self, x: torch.Tensor | None = None, num_data: int | None = None):
        K = self.num_components
        if x is None and num_data is None:
            raise ValueError("pass data x, or num_data to sample from the prior")
        num_data = x.shape[-1] if x is not None else check_int("num_data", num_data, minimum=1)
        weights = pyro.sample("weights", dist.Dirichlet(self.concentration.expand(K)))
        locs = pyro.sample("locs", SortedNormal(self.loc_loc, self.loc_scale, K))
        scales = pyro.sample("scales", dist.LogNormal(self.log_scale_scale, 1.0)
                             .expand([K]).to_event(1))
        with pyro.plate("data", num_data, dim=-1):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            z = z.long()  # draws stored as floats index like integers
            pyro.sample("x", dist.Normal(Vindex(locs)[..., z], Vindex(scales)[..., z]), obs=x)

    def simulate(self, num_data: int, *, weights=None, locs=None, scales=None,
                 seed: int | None = None) -> MixtureData:
        """Draw ``num_data`` points from given parameters (default: equal weights, means
        evenly spaced over :math:`m_0 \\pm s_0`, scales :math:`s_\\sigma`)."""
        num_data = check_int("num_data", num_data, minimum=1)
        K = self.num_components
        rng = np.random.default_rng(seed)
        dtype = self.loc_loc.dtype
        m0, s0 = float(self.loc_loc), float(self.loc_scale)
        w = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=float)
        mu = (np.linspace(m0 - s0, m0 + s0, K) if locs is None
              else np.sort(np.asarray(locs, dtype=float)))
        sd = (np.full(K, math.exp(float(self.log_scale_scale))) if scales is None
              else np.asarray(scales, dtype=float))
        if w.shape != (K,) or mu.shape != (K,) or sd.shape != (K,):
            raise ValueError(f"weights, locs and scales must have {K} entries")
        if (w < 0).any() or not np.isclose(w.sum(), 1.0) or (sd <= 0).any():
            raise ValueError("weights must be a probability vector and scales positive")
        z = rng.choice(K, size=num_data, p=w)
        x = rng.normal(mu[z], sd[z])

        def tensor(a):
            return torch.as_tensor(a, dtype=dtype, device=self.loc_loc.device)

        return MixtureData(tensor(x), torch.as_tensor(z), tensor(w), tensor(mu), tensor(sd))
