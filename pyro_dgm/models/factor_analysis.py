r"""Bayesian factor analysis as a Pyro program.

.. math::

    z_n \sim \mathcal N(0, I_q), \qquad
    x_n \mid z_n \sim \mathcal N(\mu + W z_n,\ \operatorname{diag}\psi), \qquad n = 1..N,

with priors :math:`W_{jj} \sim \mathrm{HalfNormal}(s_W)`, :math:`W_{ij} \sim \mathcal N(0, s_W^2)`
for :math:`i > j`, :math:`W_{ij} = 0` for :math:`i < j` (lower triangular with a positive
diagonal, which removes the rotation and sign symmetries, Geweke & Zhou 1996),
:math:`\psi_i \sim \mathrm{InverseGamma}(a_\psi, b_\psi)` and
:math:`\mu_i \sim \mathcal N(0, s_\mu^2)`.

Any of ``loc``, ``W``, ``psi`` may be fixed at construction; fixed parameters are buffers
and are not sampled. With all three fixed only the local latents ``z`` remain, and the
evidence and posterior are known in closed form (:mod:`pyro_dgm.models.fa_exact`).

With ``marginalize_latents=True`` the local latents are integrated out analytically,
:math:`x_n \sim \mathcal N(\mu, WW^\top + \Psi)` (a low-rank-plus-diagonal Gaussian), which
leaves the same posterior over :math:`(W, \psi, \mu)` in far fewer dimensions
(a low-rank-plus-diagonal Gaussian).

Example::

    >>> model = FactorAnalysis(obs_dim=5, latent_dim=2)
    >>> data = model.simulate(100, seed=0)         # synthetic data from known parameters
    >>> guide = pyro.infer.autoguide.AutoNormal(model)
    >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    >>> loss = svi.step(data.x)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_dgm._shared import data_plate
from pyro_dgm._validation import check_finite_tensor, check_int, check_matrix, check_positive

__all__ = ["FactorAnalysis", "FAData"]


class FAData(NamedTuple):
    """Synthetic factor-analysis data and the parameters that generated it."""

    x: torch.Tensor
    z: torch.Tensor
    loc: torch.Tensor
    W: torch.Tensor
    psi: torch.Tensor


class FactorAnalysis(PyroModule):
    r"""Bayesian factor analysis :math:`x_n = \mu + W z_n + \varepsilon_n`.

    Sample sites: ``W_diag`` (``latent_dim``,), ``W_lower`` (the strictly lower entries of
    ``W``, column by column), ``psi`` (``obs_dim``,), ``loc`` (``obs_dim``,), and inside the
    plate ``"data"``: ``z`` (``latent_dim``,) and the observed ``x`` (``obs_dim``,).

    :param obs_dim: number of observed columns :math:`p`.
    :param latent_dim: number of factors :math:`q`, ``1 <= q <= p``.
    :param loc: fixed mean :math:`\mu` (``obs_dim``,), or ``None`` to sample it.
    :param W: fixed loadings (``obs_dim``, ``latent_dim``), any matrix, or ``None``.
    :param psi: fixed noise variances (``obs_dim``,), positive, or ``None``.
    :param marginalize_latents: integrate ``z`` out analytically.
    :param w_scale: prior scale :math:`s_W` of the loadings.
    :param loc_scale: prior scale :math:`s_\mu` of the mean.
    :param psi_concentration: :math:`a_\psi`; :param psi_rate: :math:`b_\psi`.

    Call it as ``model(x)``; for minibatches pass ``subsample=idx`` (indices into the full
    data ``x``), or the batch ``x[idx]`` together with ``subsample=idx`` and
    ``num_data=N``. ``model(num_data=N)`` draws from the prior predictive.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        *,
        loc: torch.Tensor | None = None,
        W: torch.Tensor | None = None,
        psi: torch.Tensor | None = None,
        marginalize_latents: bool = False,
        w_scale: float = 1.0,
        loc_scale: float = 1.0,
        psi_concentration: float = 2.0,
        psi_rate: float = 1.0,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.obs_dim = check_int("obs_dim", obs_dim, minimum=1)
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1, maximum=self.obs_dim)
        self.marginalize_latents = bool(marginalize_latents)
        self.w_scale = check_positive("w_scale", w_scale)
        self.loc_scale = check_positive("loc_scale", loc_scale)
        self.psi_concentration = check_positive("psi_concentration", psi_concentration)
        self.psi_rate = check_positive("psi_rate", psi_rate)
        p, q = self.obs_dim, self.latent_dim
        fixed = [v for v in (loc, W, psi) if v is not None]
        dtype = dtype or (fixed[0].dtype if fixed else torch.get_default_dtype())
        self.register_buffer("_anchor", torch.zeros((), dtype=dtype))
        if loc is not None:
            loc = check_finite_tensor("loc", torch.as_tensor(loc, dtype=dtype))
            if loc.shape != (p,):
                raise ValueError(f"loc must have shape ({p},), got {tuple(loc.shape)}")
        if W is not None:
            W = check_finite_tensor("W", torch.as_tensor(W, dtype=dtype))
            if W.shape != (p, q):
                raise ValueError(f"W must have shape ({p}, {q}), got {tuple(W.shape)}")
        if psi is not None:
            psi = check_finite_tensor("psi", torch.as_tensor(psi, dtype=dtype))
            if psi.shape != (p,) or bool((psi <= 0).any()):
                raise ValueError(f"psi must be a positive vector of shape ({p},)")
        self.register_buffer("fixed_loc", loc)
        self.register_buffer("fixed_W", W)
        self.register_buffer("fixed_psi", psi)
        # W is assembled by gathering from [W_diag, W_lower, 0]: position -> source index.
        rows, cols = torch.tril_indices(p, q, offset=-1)
        source = torch.full((p, q), q + rows.numel(), dtype=torch.long)
        source[torch.arange(q), torch.arange(q)] = torch.arange(q)
        source[rows, cols] = q + torch.arange(rows.numel())
        self.register_buffer("_w_source", source.reshape(-1), persistent=False)
        self._validated = None

    @property
    def num_lower(self) -> int:
        """Number of free strictly-lower-triangular entries of ``W``."""
        p, q = self.obs_dim, self.latent_dim
        return q * (p - 1) - q * (q - 1) // 2

    @property
    def is_fixed(self) -> bool:
        """True when ``loc``, ``W`` and ``psi`` are all fixed (only ``z`` is latent)."""
        return all(v is not None for v in (self.fixed_loc, self.fixed_W, self.fixed_psi))

    def assemble_W(self, W_diag: torch.Tensor, W_lower: torch.Tensor) -> torch.Tensor:
        """Build the lower-triangular ``(..., obs_dim, latent_dim)`` loading matrix."""
        batch = torch.broadcast_shapes(W_diag.shape[:-1], W_lower.shape[:-1])
        zero = W_diag.new_zeros(batch + (1,))
        values = torch.cat([W_diag.expand(batch + W_diag.shape[-1:]),
                            W_lower.expand(batch + W_lower.shape[-1:]), zero], dim=-1)
        source = self._w_source.to(values.device)
        return values[..., source].reshape(batch + (self.obs_dim, self.latent_dim))

    @staticmethod
    def leader_order(x: torch.Tensor, latent_dim: int) -> torch.Tensor:
        """A column permutation that puts good *leading variables* first.

        The lower-triangular constraint identifies factor ``j`` through column ``j`` of the
        data; if that column barely loads on the factor, the posterior of ``W_diag[j]``
        piles up near 0 and the factor's sign is weakly identified (bimodal posteriors). This
        picks, for each principal component in turn, the not yet chosen column with the
        largest absolute loading, and appends the remaining columns in their order.
        Use it as ``x[:, FactorAnalysis.leader_order(x, q)]``.
        """
        latent_dim = check_int("latent_dim", latent_dim, minimum=1, maximum=x.shape[-1])
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        centred = x - x.mean(0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        leaders: list[int] = []
        for j in range(latent_dim):
            weights = vh[j].abs().clone()
            weights[leaders] = -1.0
            leaders.append(int(weights.argmax()))
        rest = [i for i in range(x.shape[-1]) if i not in leaders]
        return torch.tensor(leaders + rest, device=x.device)

    def check_data(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Validate data: a finite ``(rows, obs_dim)`` tensor with at least one row.

        Integer (and boolean) data are cast to the model's float dtype; the returned tensor
        is the one to use. The check is cached per tensor version.

        :raises ValueError: naming ``name``: not a 2-D tensor, wrong width, zero rows,
            complex or non-finite values.
        """
        if torch.is_tensor(x) and x.is_complex():
            raise ValueError(f"{name} must be real, got dtype {x.dtype}")
        key = (id(x), getattr(x, "_version", None), tuple(getattr(x, "shape", ())))
        if key != self._validated:
            check_matrix(name, x, columns=self.obs_dim)
            if x.shape[0] == 0:
                raise ValueError(f"{name} has zero rows: factor analysis needs at least one "
                                 "row of data")
            self._validated = key
        if not x.is_floating_point():
            x = x.to(self._anchor.dtype)
        return x

    def _globals(self, ref: torch.Tensor):
        p, q = self.obs_dim, self.latent_dim
        zero = ref.new_zeros(())
        if self.fixed_W is not None:
            W = self.fixed_W
        else:
            scale = zero + self.w_scale
            W_diag = pyro.sample("W_diag", dist.HalfNormal(scale).expand([q]).to_event(1))
            W_lower = pyro.sample(
                "W_lower", dist.Normal(zero, scale).expand([self.num_lower]).to_event(1))
            W = self.assemble_W(W_diag, W_lower)
        if self.fixed_psi is not None:
            psi = self.fixed_psi
        else:
            psi = pyro.sample("psi", dist.InverseGamma(
                zero + self.psi_concentration, zero + self.psi_rate).expand([p]).to_event(1))
        if self.fixed_loc is not None:
            loc = self.fixed_loc
        else:
            loc = pyro.sample("loc", dist.Normal(zero, zero + self.loc_scale)
                              .expand([p]).to_event(1))
        return loc, W, psi

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        subsample: torch.Tensor | None = None,
        num_data: int | None = None,
    ) -> torch.Tensor:
        """Run the generative program; returns the (observed or sampled) batch of ``x``."""
        if x is not None:
            x = self.check_data(x)  # integer data become the model's float dtype
        ref = x if x is not None else self._anchor
        loc, W, psi = self._globals(ref)
        with data_plate(x, subsample=subsample, num_data=num_data) as batch:
            if self.marginalize_latents:
                fn = dist.LowRankMultivariateNormal(loc, W, psi)
            else:
                zero = ref.new_zeros(())
                z = pyro.sample("z", dist.Normal(zero, zero + 1.0)
                                .expand([self.latent_dim]).to_event(1))
                mean = loc + (W @ z.unsqueeze(-1)).squeeze(-1)
                fn = dist.Normal(mean, psi.sqrt()).to_event(1)
            return pyro.sample("x", fn, obs=batch)

    @torch.no_grad()
    def simulate(
        self,
        num_data: int,
        *,
        seed: int | None = None,
        loc: torch.Tensor | None = None,
        W: torch.Tensor | None = None,
        psi: torch.Tensor | None = None,
    ) -> FAData:
        """Draw synthetic data from known parameters.

        Parameters not given are taken from the fixed ones or drawn from the prior; all
        are returned with the data so a test can compare against the truth.
        """
        num_data = check_int("num_data", num_data, minimum=1)
        rng = np.random.default_rng(seed)
        ref = self._anchor
        p, q = self.obs_dim, self.latent_dim

        def tensor(array):
            return torch.as_tensor(array, dtype=ref.dtype, device=ref.device)

        loc = loc if loc is not None else self.fixed_loc
        W = W if W is not None else self.fixed_W
        psi = psi if psi is not None else self.fixed_psi
        if loc is None:
            loc = tensor(self.loc_scale * rng.standard_normal(p))
        if W is None:
            W = self.assemble_W(tensor(self.w_scale * np.abs(rng.standard_normal(q))),
                                tensor(self.w_scale * rng.standard_normal(self.num_lower)))
        if psi is None:
            psi = tensor(1.0 / rng.gamma(self.psi_concentration, 1.0 / self.psi_rate, p))
        loc, W, psi = (torch.as_tensor(v, dtype=ref.dtype, device=ref.device)
                       for v in (loc, W, psi))
        z = tensor(rng.standard_normal((num_data, q)))
        x = loc + z @ W.T + psi.sqrt() * tensor(rng.standard_normal((num_data, p)))
        return FAData(x=x, z=z, loc=loc, W=W, psi=psi)
