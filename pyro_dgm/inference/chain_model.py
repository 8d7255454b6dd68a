r"""A Pyro model evaluated for many chains at once under a chain plate.

The model runs inside ``pyro.plate("_chains", C, dim=-(P + 1))``, where ``P`` is its plate
nesting, with every latent site conditioned on a ``(C, 1, ..., 1, *site_shape)`` tensor (the
chain dimension left of every plate dimension, as ``vectorize_particles`` and
``Predictive(parallel=True)`` do). One run then gives every chain's log density: each site's
``log_prob`` has shape ``(C, *plate_dims)``. Data with a leading dimension of size ``C``
broadcasts against the chain plate, so each chain may have its own data set (simulation-based
calibration runs its replications as the chains of one run).

A model vectorizes when it broadcasts over leading batch dimensions (write ``(x * beta)
.sum(-1)`` rather than ``x @ beta``, index with :class:`~pyro.ops.indexing.Vindex`); the
same rule as for parallel enumeration. :class:`ChainModel` checks the shapes once and raises
:class:`NotVectorizable` otherwise.

The model's structure is read at a point of its support, never by requiring a prior draw,
so improper priors (:class:`~pyro.distributions.ImproperUniform`) work: see
:func:`~pyro_dgm.inference.model_info.point_strategy`; chains start by the kernel's
``init_strategy``, or uniformly in ``(-2, 2)`` of the unconstrained space where it would
have to draw from such a prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide.initialization import InitMessenger, init_to_uniform
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from pyro_dgm.inference.model_info import data_like, model_info, point_strategy, support_point

__all__ = ["CHAIN_PLATE", "ChainModel", "NotVectorizable", "SiteInfo", "describe_nonfinite",
           "plate_dims", "site_log_prob"]

CHAIN_PLATE = "_chains"


class NotVectorizable(ValueError):
    """The model does not broadcast over a leading chain dimension."""


@dataclass
class SiteInfo:
    """What a sampler needs to know about one latent site."""

    name: str
    shape: torch.Size  # value shape of one chain (batch + event)
    padded: torch.Size  # value shape for all chains: (C, 1.., *shape)
    dtype: torch.dtype
    discrete: bool
    enumerable: bool
    event_dim: int
    plate_dims: frozenset  # negative dims of the site's plates (not the chain plate)
    to_constrained: object  # torch Transform unconstrained -> support, or None
    unconstrained_shape: torch.Size | None  # one chain's unconstrained shape

    @property
    def unconstrained_padded(self) -> torch.Size:
        """Unconstrained value shape for all chains: ``(C, 1.., *unconstrained_shape)``."""
        return self.padded[:len(self.padded) - len(self.shape)] + self.unconstrained_shape


def plate_dims(site) -> frozenset:
    return frozenset(f.dim for f in site["cond_indep_stack"]
                     if f.vectorized and f.dim is not None and f.name != CHAIN_PLATE)


def site_log_prob(site) -> torch.Tensor:
    """Scaled and masked ``log_prob`` of a traced sample site."""
    return scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])


class ChainModel:
    """``model(*args, **kwargs)`` evaluated for ``num_chains`` chains in one run.

    :param max_plate_nesting: the model's plate nesting (default: found by tracing it).
    :raises NotVectorizable: when a site's value or log density does not carry the chain
        dimension where it should.
    """

    def __init__(self, model, args: tuple, kwargs: dict, num_chains: int, *,
                 max_plate_nesting: int | None = None):
        self.model, self.args, self.kwargs = model, tuple(args), dict(kwargs or {})
        self.num_chains = num_chains
        self._like = data_like(self.args, self.kwargs)
        info = model_info(model, self.args, self.kwargs)
        self.max_plate_nesting = (info.max_plate_nesting if max_plate_nesting is None
                                  else int(max_plate_nesting))
        self.chain_dim = -(self.max_plate_nesting + 1)
        try:
            trace = self._trace_point()
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            raise NotVectorizable(
                "the model fails under a chain plate (it does not broadcast over a leading "
                f"chain dimension): {str(e).splitlines()[0]}") from e
        self.sites: dict[str, SiteInfo] = {}
        for name, shape in info.latent.items():
            node = trace.nodes[name]
            pad = self.max_plate_nesting - info.batch_ndim[name]
            if pad < 0:
                raise NotVectorizable(
                    f"site {name!r} has {info.batch_ndim[name]} batch dims, more than the "
                    f"max_plate_nesting={self.max_plate_nesting}")
            padded = torch.Size((num_chains,) + (1,) * pad + tuple(shape))
            fn = node["fn"]
            if node["value"].shape != padded:
                raise NotVectorizable(
                    f"site {name!r}: under a chain plate its value has shape "
                    f"{tuple(node['value'].shape)}, expected {tuple(padded)}; the model does "
                    "not broadcast over a leading chain dimension")
            discrete = bool(fn.support.is_discrete)
            to_constrained, ushape = None, None
            if not discrete:
                try:
                    to_constrained = biject_to(fn.support)
                    u = to_constrained.inv(node["value"])
                    ushape = u.shape[1 + pad:]
                except NotImplementedError:
                    to_constrained = None
            self.sites[name] = SiteInfo(name, torch.Size(shape), padded, node["value"].dtype,
                                        discrete, bool(fn.has_enumerate_support), fn.event_dim,
                                        plate_dims(node), to_constrained, ushape)
        self.factors = [name for name, node in trace.nodes.items()
                        if node["type"] == "sample" and not site_is_subsample(node)]
        self.check_shapes(trace)
        self.prior_values = {name: trace.nodes[name]["value"] for name in self.sites}

    # -- running the model --------------------------------------------------------------
    def plate(self):
        return pyro.plate(CHAIN_PLATE, self.num_chains, dim=self.chain_dim)

    def _trace_point(self):
        """One run under the chain plate at a prior draw where the prior can be sampled and a
        point of the support elsewhere (the messenger sits below the plate so that it sees
        the broadcast distribution)."""
        init = InitMessenger(point_strategy(like=self._like))
        with torch.no_grad(), poutine.block(), init, self.plate():
            return poutine.trace(self.model).get_trace(*self.args, **self.kwargs)

    def trace(self, values: dict[str, torch.Tensor]):
        """Run the model under the chain plate with latent sites conditioned on ``values``
        (padded, constrained; discrete values are cast to the sites' dtypes)."""
        data = {name: v.to(self.sites[name].dtype) if self.sites[name].discrete else v
                for name, v in values.items()}
        with torch.no_grad(), poutine.block(), self.plate():
            return poutine.trace(poutine.condition(self.model, data=data)).get_trace(
                *self.args, **self.kwargs)

    def check_shapes(self, trace) -> None:
        """Every log density must have shape ``(C, *plate_dims)``: the chain dim first."""
        ndim = self.max_plate_nesting + 1
        for name in self.factors:
            lp = site_log_prob(trace.nodes[name])
            if lp.dim() != ndim or lp.shape[0] != self.num_chains:
                raise NotVectorizable(
                    f"site {name!r}: its log density under a chain plate of size "
                    f"{self.num_chains} has shape {tuple(lp.shape)}, expected ({self.num_chains}, "
                    f"...) with {ndim} dims; the model does not broadcast over a leading chain "
                    "dimension")

    def log_joint(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log joint density of every chain, shape ``(C,)``."""
        trace = self.trace(values)
        total = 0.0
        for name in self.factors:
            total = total + site_log_prob(trace.nodes[name]).reshape(self.num_chains, -1).sum(-1)
        if not torch.is_tensor(total):
            total = torch.zeros(self.num_chains)
        return total

    # -- constrained <-> unconstrained ------------------------------------------------------
    def constrain(self, name: str, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Constrained value of ``u`` (any leading dims before the site's padded batch dims)
        and the log |Jacobian| of the map, summed over the site's event dims."""
        t = self.sites[name].to_constrained
        x = t(u)
        ladj = t.log_abs_det_jacobian(u, x)
        extra = self.sites[name].event_dim - t.codomain.event_dim
        if extra > 0:
            ladj = ladj.sum(tuple(range(-extra, 0)))
        return x, ladj

    def unconstrain(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.sites[name].to_constrained.inv(x)

    # -- initialization and error messages ---------------------------------------------------
    def init_values(self, init_strategy=init_to_uniform) -> dict[str, torch.Tensor]:
        """Padded constrained initial values of every chain: ``init_strategy`` for continuous
        sites, a prior draw for discrete ones. Where the prior cannot be sampled (Pyro's
        ``init_to_*`` strategies draw from it, which ``ImproperUniform`` refuses), a uniform
        point in ``(-2, 2)`` of the unconstrained space, as ``init_to_uniform`` would give."""

        def init_fn(site):
            try:
                if site["fn"].support.is_discrete:
                    return site["fn"].sample().detach()
                return init_strategy(site)
            except NotImplementedError:
                return support_point(site, radius=2.0, like=self._like)

        # the init messenger sits below the plate so that it sees the broadcast distribution
        with torch.no_grad(), poutine.block(), InitMessenger(init_fn), self.plate():
            trace = poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
        return {name: trace.nodes[name]["value"].detach() for name in self.sites}

    def valid_init_values(self, init_strategy=init_to_uniform, *, max_tries: int = 100,
                          what: str = "sampler") -> dict[str, torch.Tensor]:
        """:meth:`init_values`, redrawing the chains whose log joint density is not finite
        (up to ``max_tries`` times; then ``ValueError`` naming the site)."""
        values = self.init_values(init_strategy)
        for _ in range(max_tries):
            bad = ~torch.isfinite(self.log_joint(values))
            if not bool(bad.any()):
                return values
            fresh = self.init_values(init_strategy)
            values = {k: torch.where(bad.reshape((-1,) + (1,) * (v.dim() - 1)), fresh[k], v)
                      for k, v in values.items()}
        raise ValueError(f"{what}: non-finite log density at every initial point tried: "
                         + describe_nonfinite(self, values))

    def nonfinite_sites(self, values: dict[str, torch.Tensor]) -> dict[str, list[int]]:
        """Sites whose log density is not finite, with the chains concerned (for errors;
        this synchronizes with the device)."""
        trace = self.trace(values)
        bad = {}
        for name in self.factors:
            lp = site_log_prob(trace.nodes[name])
            ok = torch.isfinite(lp).reshape(lp.shape[0], -1).all(-1)
            if not bool(ok.all()):
                bad[name] = [int(c) for c in torch.nonzero(~ok).reshape(-1)[:5]]
        return bad


def describe_nonfinite(chain_model: ChainModel, values, extra: str = "") -> str:
    """``"site 'x' (chains [0, 3])"`` for the first site with a non-finite log density."""
    bad = chain_model.nonfinite_sites(values)
    if not bad:
        return "the log |Jacobian| of the unconstraining transforms" + extra
    name, chains = next(iter(bad.items()))
    return f"site {name!r} (chains {chains})" + extra

