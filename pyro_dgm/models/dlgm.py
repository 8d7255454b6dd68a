r"""Deep latent Gaussian models (Rezende, Mohamed & Wierstra 2014) and their VAE special case.

A DLGM with :math:`L` Gaussian stochastic layers generates top-down

.. math::

    z_L \sim \mathcal N(0, I),\qquad
    z_l \mid z_{l+1} \sim \mathcal N\big(\mu_l(z_{l+1}),\ \operatorname{diag}\sigma_l^2\big),
    \qquad x \mid z_1 \sim p\big(x \mid \eta(z_1)\big),

with multilayer perceptrons :math:`\mu_l, \eta` (tanh hidden layers) and learned diagonal
standard deviations :math:`\sigma_l` (one vector per layer, :math:`\sigma = \mathrm{softplus}
(\rho)`). The likelihood is ``"bernoulli"`` (logits :math:`\eta`; data in :math:`[0, 1]`, so
grey levels act as soft targets) or ``"gaussian"`` (mean :math:`\eta`, learned diagonal
standard deviation). ``DLGM(obs_dim, [d])`` is the VAE of Kingma & Welling (2014).

Sample sites are ``"z1"`` (next to the data) … ``"zL"`` (top) and ``"x"``, all inside the
data plate of :func:`~pyro_dgm.models.data_plate` (``model(x, subsample=idx)``). Every
network acts on the last dimension only, so model and guide broadcast over vectorized
particles (``IWAE(vectorize_particles=True)``).

:class:`DLGMGuide` is the matching recognition model, bottom-up like the generative model
read backwards (Burda et al. 2015):
:math:`q(z_1 \mid x)\,q(z_2 \mid z_1)\cdots q(z_L \mid z_{L-1})`, each a diagonal Gaussian
whose mean and log-scale come from an MLP. For a flow posterior use
:class:`~pyro_dgm.inference.flows.AmortizedFlowGuide` on the same model
(:func:`pyro_dgm.dlgm.make_guide` builds either by name).

Example::

    >>> model = DLGM(64, [20, 10], hidden_dims=[100, 100])
    >>> guide = DLGMGuide(model)
    >>> loss = IWAE(num_particles=5)(model, guide)         # nn.Module
    >>> loss(x, subsample=idx).backward()
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pyro_dgm._shared import data_plate, inverse_softplus, mlp
from pyro_dgm._validation import check_choice, check_int
from pyro_dgm.defaults import DLGM_LIKELIHOODS

__all__ = ["DLGM", "DLGMGuide"]

#: likelihoods of :class:`DLGM`
LIKELIHOODS = DLGM_LIKELIHOODS


def _check_dims(latent_dims, hidden_dims) -> tuple[list[int], list[int]]:
    if latent_dims is None or isinstance(latent_dims, int | str):
        latent_dims = [latent_dims] if isinstance(latent_dims, int) else latent_dims
    if latent_dims is None or len(latent_dims) == 0:
        raise ValueError("latent_dims must list at least one latent layer size, got "
                         f"{latent_dims!r}")
    latent = [check_int("latent_dims", d, minimum=1) for d in latent_dims]
    hidden = [check_int("hidden_dims", h, minimum=1) for h in hidden_dims]
    return latent, hidden


class DLGM(PyroModule):
    r"""Deep latent Gaussian model :math:`z_L \to \dots \to z_1 \to x` (see module docstring).

    :param obs_dim: width of a data row.
    :param latent_dims: sizes ``[d_1, ..., d_L]`` of the stochastic layers, ``d_1`` next to
        the data (``[d]``: a VAE).
    :param hidden_dims: hidden widths of every network (tanh).
    :param likelihood: ``"bernoulli"`` or ``"gaussian"``.
    :param init_scale: initial :math:`\sigma_l` of the inner layers (and of a Gaussian
        likelihood).

    Call as ``model(x, subsample=idx, num_data=N)`` (see :func:`~pyro_dgm.models.data_plate`)
    or ``model(num_data=n)`` to sample from the prior.

    :raises ValueError: empty ``latent_dims``, bad sizes, unknown likelihood; at call time,
        data whose width is not ``obs_dim``, and (with validation on) data outside
        :math:`[0, 1]` for the Bernoulli likelihood.
    """

    def __init__(self, obs_dim: int, latent_dims: Sequence[int], hidden_dims: Sequence[int]
                 = (100, 100), likelihood: str = "bernoulli", init_scale: float = 1.0):
        super().__init__()
        self.obs_dim = check_int("obs_dim", obs_dim, minimum=1)
        self.latent_dims, self.hidden_dims = _check_dims(latent_dims, hidden_dims)
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        hidden = self.hidden_dims
        self.decoder = mlp([self.latent_dims[0], *hidden, self.obs_dim])
        # layer l (1-based) maps z_{l+1} to the mean of z_l
        self.means = nn.ModuleList(
            mlp([self.latent_dims[i + 1], *hidden, self.latent_dims[i]])
            for i in range(len(self.latent_dims) - 1))
        raw = inverse_softplus(init_scale)
        self.raw_scales = nn.ParameterList(
            nn.Parameter(torch.full((d,), raw)) for d in self.latent_dims[:-1])
        if self.likelihood == "gaussian":
            self.raw_obs_scale = nn.Parameter(torch.full((self.obs_dim,), raw))

    @property
    def num_layers(self) -> int:
        return len(self.latent_dims)

    @property
    def site_names(self) -> list[str]:
        """Latent sites from the data up: ``["z1", ..., "zL"]``."""
        return [f"z{i + 1}" for i in range(self.num_layers)]

    def check_data(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Validate a data matrix once (shape, finiteness and, for Bernoulli, the range)."""
        if not torch.is_tensor(x) or x.dim() != 2:
            raise ValueError(f"{name} must be a (rows, {self.obs_dim}) tensor, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if x.shape[-1] != self.obs_dim:
            raise ValueError(f"{name} has {x.shape[-1]} columns but obs_dim is {self.obs_dim}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
        if self.likelihood == "bernoulli" and bool(((x < 0) | (x > 1)).any()):
            raise ValueError(f"{name} has values outside [0, 1], which a Bernoulli likelihood "
                             "cannot model (binarize or rescale the data)")
        return x

    def decode(self, z1: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits or Gaussian means of ``x`` given ``z1``."""
        return self.decoder(z1)

    def observation(self, z1: torch.Tensor, obs_mask: torch.Tensor | None = None
                    ) -> dist.TorchDistribution:
        """The distribution of a data row given ``z1`` (event dim 1); ``obs_mask`` drops the
        pixels where it is ``False`` from the density."""
        eta = self.decode(z1)
        if self.likelihood == "bernoulli":
            # data in [0, 1]: grey levels are soft targets of the cross-entropy
            fn = dist.Bernoulli(logits=eta, validate_args=False)
        else:
            fn = dist.Normal(eta, F.softplus(self.raw_obs_scale))
        if obs_mask is not None:
            fn = fn.mask(obs_mask)
        return fn.to_event(1)

    def forward(self, x: torch.Tensor | None = None, subsample: torch.Tensor | None = None,
                num_data: int | None = None, obs_mask: torch.Tensor | None = None):
        """Run the model; returns the batch's ``x`` (observed or sampled).

        :param obs_mask: optional boolean ``(rows, obs_dim)`` mask of the observed pixels
            of the batch (imputation: the others do not enter the likelihood).
        """
        if x is not None:
            if x.dim() != 2 or x.shape[-1] != self.obs_dim:
                raise ValueError(f"x must have shape (rows, {self.obs_dim}), got "
                                 f"{tuple(x.shape)} (obs_dim is {self.obs_dim})")
            if torch.distributions.Distribution._validate_args and not torch.jit.is_tracing():
                if self.likelihood == "bernoulli" and bool(((x < 0) | (x > 1)).any()):
                    raise ValueError("x has values outside [0, 1], which a Bernoulli "
                                     "likelihood cannot model")
        ref = self.decoder[0].weight
        with data_plate(x, subsample=subsample, num_data=num_data) as batch:
            top = self.latent_dims[-1]
            zero = ref.new_zeros(top)
            z = pyro.sample(f"z{self.num_layers}",
                            dist.Normal(zero, torch.ones_like(zero)).to_event(1))
            for i in reversed(range(self.num_layers - 1)):
                loc = self.means[i](z)
                scale = F.softplus(self.raw_scales[i])
                z = pyro.sample(f"z{i + 1}", dist.Normal(loc, scale).to_event(1))
            return pyro.sample("x", self.observation(z, obs_mask), obs=batch)


class DLGMGuide(PyroModule):
    r"""Recognition model :math:`q(z_1\mid x)\prod_{l>1} q(z_l \mid z_{l-1})` for a :class:`DLGM`.

    Each factor is :math:`\mathcal N(m_l(h), \operatorname{diag}\,\mathrm{softplus}(s_l(h))^2)`
    with one MLP (tanh, ``hidden_dims``) outputting :math:`[m_l, s_l]` from
    :math:`h = x` (layer 1) or :math:`h = z_{l-1}`. Takes the model's arguments.

    :param model: the :class:`DLGM` it inverts (sizes are read off it).
    :param hidden_dims: hidden widths (default: the model's).
    """

    def __init__(self, model: DLGM, hidden_dims: Sequence[int] | None = None):
        super().__init__()
        if not isinstance(model, DLGM):
            raise ValueError(f"model must be a DLGM, got {type(model).__name__}")
        hidden = model.hidden_dims if hidden_dims is None else \
            [check_int("hidden_dims", h, minimum=1) for h in hidden_dims]
        self.obs_dim, self.latent_dims = model.obs_dim, list(model.latent_dims)
        inputs = [model.obs_dim, *self.latent_dims[:-1]]
        self.nets = nn.ModuleList(mlp([a, *hidden, 2 * d])
                                  for a, d in zip(inputs, self.latent_dims, strict=True))
        with torch.no_grad():  # start near the prior's scale
            for net in self.nets:
                net[-1].weight.mul_(0.1)
                net[-1].bias.zero_()

    def forward(self, x: torch.Tensor | None = None, subsample: torch.Tensor | None = None,
                num_data: int | None = None, obs_mask: torch.Tensor | None = None):
        if x is None:
            raise ValueError("DLGMGuide needs the data x")
        with data_plate(x, subsample=subsample, num_data=num_data) as batch:
            h = batch
            out = {}
            for i, net in enumerate(self.nets):
                loc, raw = net(h).chunk(2, dim=-1)
                h = pyro.sample(f"z{i + 1}",
                                dist.Normal(loc, F.softplus(raw + 0.5413)).to_event(1))
                out[f"z{i + 1}"] = h
            return out

