r"""An amortized normalizing-flow guide for local latent sites inside a data plate.

For each row :math:`x_n` of the batch an encoder produces a context :math:`h_n`; every
guided site :math:`z_n` gets

.. math::

    z_n = T\big(f_K \circ \dots \circ f_1(\varepsilon_n; h_n)\big),\qquad
    \varepsilon_n \sim \mathcal N\big(\mu(h_n), \operatorname{diag}\sigma(h_n)^2\big),

with linear heads :math:`\mu, \log\sigma` on the context, ``num_flows`` conditional flows
(planar/radial layers whose parameters are shifted by linear functions of :math:`h_n`, as in
Rezende & Mohamed 2015; IAF layers whose MADE takes :math:`h_n`, Kingma et al. 2016; affine
coupling layers whose networks take :math:`h_n`, Dinh et al. 2017) and :math:`T` the bijection
onto the site's support. ``flow=None`` gives the plain amortized diagonal Gaussian with the
same encoder (the usual VAE guide), the baseline the flows are measured against.

Calling convention (the one of :func:`pyro_dgm.models.data_plate`): the guide takes the
model's arguments; the first positional argument (or keyword ``x``) is the data whose rows
the plate indexes, with optional ``subsample=`` indices and ``num_data=``. The guide enters
the same plate with the same indices and encodes exactly the rows of the batch.

With an invertible flow (``"iaf"``, ``"realnvp"``, or ``None``) every guide site scores
arbitrary values (``site["fn"].log_prob(z)``), as DReG/STL gradients of importance-weighted
bounds need; planar and radial flows raise a ``ValueError`` explaining that they cannot.

Example::

    >>> fa = FactorAnalysis(5, 2, loc=loc, W=W, psi=psi)
    >>> guide = AmortizedFlowGuide(fa, flow="iaf", num_flows=4)
    >>> svi = SVI(fa, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    >>> svi.step(x, subsample=idx)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro
import torch
import torch.nn.functional as F
from pyro.infer.autoguide import AutoGuide
from torch import nn
from torch.distributions import biject_to
from torch.distributions.transforms import IndependentTransform, identity_transform

from pyro_dgm._shared import data_plate, inverse_softplus
from pyro_dgm._validation import check_int, check_positive
from pyro_dgm.inference.flows.distribution import FlowDistribution
from pyro_dgm.inference.flows.stack import FLOWS, build_flows, check_flow_args

__all__ = ["AmortizedFlowGuide"]

#: plates added by Pyro's vectorized particles, never a data plate
_PARTICLE_PLATES = frozenset({"num_particles_vectorized"})


def _support_transform(support):
    """``biject_to(support)``, or ``None`` when that is the identity."""
    transform = biject_to(support)
    base = transform.base_transform if isinstance(transform, IndependentTransform) \
        else transform
    return None if base == identity_transform else transform


def _data_frames(site) -> list:
    return [f for f in site["cond_indep_stack"]
            if f.vectorized and f.name not in _PARTICLE_PLATES]


class AmortizedFlowGuide(AutoGuide):
    """Encoder → diagonal Gaussian → ``num_flows`` conditional flows, per local site.

    :param model: a Pyro model whose guided sites sit in one data plate.
    :param encoder: an ``nn.Module`` mapping the batch ``(B, ...)`` to contexts ``(B, c)``;
        default: an MLP with ReLU layers ``encoder_hidden`` over the flattened rows.
    :param flow: ``"planar"``, ``"radial"``, ``"iaf"``, ``"realnvp"``, or ``None`` for the
        diagonal Gaussian alone.
    :param num_flows: number :math:`K \\ge 1` of flow layers (per site).
    :param hidden_dims: hidden widths of the IAF/coupling networks (default ``(64, 64)``).
    :param sites: names of the sites to guide (default: every latent site; all of them must
        be inside the data plate).
    :param encoder_hidden: hidden widths of the default encoder.
    :param init_scale: initial standard deviation of the Gaussian before the flows.
    """

    def __init__(self, model: Callable, encoder: nn.Module | None = None,
                 flow: str | None = "planar", num_flows: int = 4, *,
                 hidden_dims: Sequence[int] | None = None,
                 sites: Sequence[str] | None = None,
                 encoder_hidden: Sequence[int] = (64, 64), init_scale: float = 1.0,
                 **flow_kwargs):
        if flow is None:
            self.flow, self.num_flows = None, 0
        else:
            self.flow, self.num_flows = check_flow_args(flow, num_flows)
        if sites is not None:
            if isinstance(sites, str):
                sites = [sites]
            sites = list(sites)
        self._site_names = sites
        self.hidden_dims = hidden_dims
        self.encoder_hidden = [check_int("encoder_hidden", h, minimum=1)
                               for h in encoder_hidden]
        self.init_scale = check_positive("init_scale", init_scale)
        self._flow_kwargs = flow_kwargs
        super().__init__(model)
        self.encoder = encoder
        self._flatten_input = False
        self.heads = nn.ModuleDict()
        self.flows = nn.ModuleDict()

    @property
    def invertible(self) -> bool:
        """Whether the guide can score arbitrary values of its sites."""
        return self.flow is None or FLOWS[self.flow].invertible

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        latent = {name: site for name, site in self.prototype_trace.iter_stochastic_nodes()}
        names = list(latent) if self._site_names is None else self._site_names
        if not names:
            raise ValueError("sites: the model has no latent sites to guide")
        frames = {}
        for name in names:
            if name not in latent:
                raise ValueError(f"sites: {name!r} is not a latent sample site of the model "
                                 f"(latent sites: {', '.join(latent) or 'none'})")
            site = latent[name]
            found = _data_frames(site)
            if len(found) != 1:
                where = "not in a plate" if not found else \
                    f"in {len(found)} plates ({', '.join(f.name for f in found)})"
                raise ValueError(
                    f"site {name!r} is {where}: AmortizedFlowGuide guides local latents "
                    "inside exactly one data plate (guide global sites with another guide, "
                    "e.g. AutoGuideList, and pass sites=[...])")
            if site["fn"].support.is_discrete:
                raise ValueError(f"site {name!r} is discrete; flows need continuous sites")
            frames[name] = found[0]
        plates = {f.name for f in frames.values()}
        if len(plates) != 1:
            raise ValueError(f"sites: all guided sites must share one data plate, got "
                             f"{sorted(plates)}")
        self._frame = next(iter(frames.values()))
        self._sites = {}
        for name in names:
            site = latent[name]
            fn = site["fn"]
            unconstrained = biject_to(fn.support).inv(site["value"])
            event = unconstrained.shape[unconstrained.dim() - fn.event_dim:]
            self._sites[name] = (event, _support_transform(fn.support))

    def _data(self, args, kwargs):
        if args:
            return args[0]
        if "x" in kwargs:
            return kwargs["x"]
        raise ValueError("AmortizedFlowGuide needs the data as the first argument or x=")

    def _build(self, context: torch.Tensor) -> None:
        c = context.shape[-1]
        for name, (event, _) in self._sites.items():
            d = max(math.prod(event), 1)
            head = nn.Linear(c, 2 * d)
            with torch.no_grad():
                head.weight.mul_(0.1)
                head.bias[d:] = inverse_softplus(self.init_scale)
            self.heads[name] = head.to(context)
            if self.flow is not None:
                self.flows[name] = build_flows(
                    self.flow, d, self.num_flows, context_dim=c,
                    hidden_dims=self.hidden_dims, **self._flow_kwargs).to(context)

    def _encode(self, batch: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            dims = [batch[0].numel(), *self.encoder_hidden]
            layers = []
            for a, b in zip(dims[:-1], dims[1:], strict=True):
                layers += [nn.Linear(a, b), nn.ReLU()]
            self.encoder = nn.Sequential(*layers).to(batch)
            self._flatten_input = True
        if self._flatten_input:  # the default encoder reads flattened rows
            batch = batch.reshape(batch.shape[:1] + (-1,))
        return self.encoder(batch)

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        x = self._data(args, kwargs)
        frame = self._frame
        result = {}
        with data_plate(x, subsample=kwargs.get("subsample"), num_data=kwargs.get("num_data"),
                        name=frame.name, dim=frame.dim) as batch:
            context = self._encode(batch)
            if context.dim() != 2 or context.shape[0] != batch.shape[0]:
                raise ValueError(f"encoder must map the batch to (rows, context), got "
                                 f"{tuple(context.shape)} for {batch.shape[0]} rows")
            if not self.heads:
                self._build(context)
            # put the plate's dim in place: (B, 1, ..., 1, c)
            context = context.reshape(context.shape[:1] + (1,) * (-1 - frame.dim)
                                      + context.shape[-1:])
            for name, (event, transform) in self._sites.items():
                loc, raw = self.heads[name](context).chunk(2, dim=-1)
                flows = self.flows[name] if self.flow is not None else None
                fn = FlowDistribution(loc, F.softplus(raw), flows,
                                      None if flows is None else context,
                                      event_shape=event, transform=transform)
                result[name] = pyro.sample(name, fn)
        return result
