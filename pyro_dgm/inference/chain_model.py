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
same rule as for parallel enumeration. :class:`ChainModel` checks once, when built, that the
model keeps the chains apart, and raises :class:`NotVectorizable` otherwise: by shape (every
value and log density carries the chain dimension where it should) and, for two or more
chains, by value (:meth:`ChainModel.check_values`): a model can keep every shape and still
mix chains (``beta.flatten()`` reshaped back in another order, ``.sum()``/``.mean()`` over
the batch dimension, ``beta[0]``). At distinct points, each site's log density for a few
chains of the batched run must equal, to a dtype-set tolerance, that chain's log density
evaluated alone: a plain single-chain trace (what sequential chains evaluate), or, when the
data carry a chain dimension, the batched run with every chain at that chain's point.

The model's structure is read at a point of its support, never by requiring a prior draw,
so improper priors (:class:`~pyro.distributions.ImproperUniform`) work: see
:func:`~pyro_dgm.inference.model_info.point_strategy`; chains start by the kernel's
``init_strategy``, or uniformly in ``(-2, 2)`` of the unconstrained space where it would
have to draw from such a prior.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide.initialization import InitMessenger, init_to_uniform
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from pyro_dgm.inference.model_info import data_like, model_info, point_strategy, support_point

__all__ = ["CHAIN_PLATE", "CHECKED_CHAINS", "ChainModel", "NotVectorizable", "SiteInfo",
           "describe_nonfinite", "plate_dims", "site_log_prob", "value_tolerance"]

CHAIN_PLATE = "_chains"
#: how many chains :meth:`ChainModel.check_values` evaluates one by one (first, second,
#: middle and last: a ``beta[0]`` is right for chain 0 only)
CHECKED_CHAINS = 4


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
        if num_chains > 1:
            self.check_values()

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

    def trace(self, values: dict[str, torch.Tensor], grad: bool = False):
        """Run the model under the chain plate with latent sites conditioned on ``values``
        (padded, constrained; discrete values are cast to the sites' dtypes); ``grad``: keep
        the autograd graph (gradient-based kernels)."""
        data = {name: v.to(self.sites[name].dtype) if self.sites[name].discrete else v
                for name, v in values.items()}
        with torch.set_grad_enabled(grad), poutine.block(), self.plate():
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

    def log_joint(self, values: dict[str, torch.Tensor], grad: bool = False) -> torch.Tensor:
        """Log joint density of every chain, shape ``(C,)`` (``grad``: see :meth:`trace`)."""
        trace = self.trace(values, grad)
        total = 0.0
        for name in self.factors:
            total = total + site_log_prob(trace.nodes[name]).reshape(self.num_chains, -1).sum(-1)
        if not torch.is_tensor(total):
            total = torch.zeros(self.num_chains)
        return total

    # -- the by-value check (once, at set-up) -----------------------------------------------
    def check_values(self, num_checked: int = CHECKED_CHAINS) -> None:
        """Check that the batched run keeps the chains apart by value, not only by shape.

        Every chain is moved to its own point (its prior draw plus ``N(0, 0.5^2)`` noise in
        the unconstrained space, from a generator of its own; a chain whose log density is
        not finite there keeps its prior draw). For chains 0, 1, ``C // 2`` and ``C - 1``,
        each site's log density in the batched run must equal the one of that chain
        evaluated alone (see the module doc), to :func:`value_tolerance`. Every evaluation
        starts from the same random state, which is restored afterwards: subsampling plates
        draw the same indices and the caller's random stream is untouched. This synchronizes
        with the device, once.

        :raises NotVectorizable: naming the chain, the site and the two log densities.
        """
        C = self.num_chains
        checked = sorted({0, 1, C // 2, C - 1})[:num_checked]
        with _fixed_rng() as reset:
            values = self._distinct_points(reset)
            reset()
            batched = _factor_sums(self.trace(values), self.factors, C)
            reference, how = self._alone(values, checked, reset)
        for c in checked:
            for name in self.factors:
                a, b = batched[name][0][c], reference[c][name]
                tol = value_tolerance(a.dtype, float(batched[name][1][c]))
                if not _same(float(a), float(b), tol):
                    raise NotVectorizable(
                        f"the chains of one batched run see each other's values: site "
                        f"{name!r} has log density {float(a):.8g} for chain {c} in the batched "
                        f"run but {float(b):.8g} {how}; the model mixes the chains (a sum, mean, "
                        "flatten or index over the leading chain dimension?) although every "
                        "shape is right")

    def _distinct_points(self, reset) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        moved = {}
        for name, site in self.sites.items():
            v = self.prior_values[name]
            if site.discrete or site.to_constrained is None:
                moved[name] = v
                continue
            u = site.to_constrained.inv(v)
            noise = torch.randn(u.shape, generator=gen, dtype=u.dtype).to(u.device)
            moved[name] = site.to_constrained(u + 0.5 * noise)
        try:
            reset()
            ok = torch.isfinite(self.log_joint(moved))
        except (RuntimeError, ValueError, IndexError, TypeError):
            return self.prior_values
        return {k: torch.where(ok.reshape((-1,) + (1,) * (v.dim() - 1)), v,
                               self.prior_values[k]) for k, v in moved.items()}

    def _alone(self, values, checked, reset) -> tuple[dict, str]:
        """Each checked chain's log density per site evaluated alone, and how (for errors)."""
        try:
            return {c: self._plain(values, c, reset) for c in checked}, "when evaluated alone"
        except (_PerChainData, RuntimeError, ValueError, IndexError, TypeError):
            pass
        out = {}
        for c in checked:  # data per chain: every chain at chain c's point
            same = {k: v[c:c + 1].expand_as(v) for k, v in values.items()}
            try:
                reset()
                trace = self.trace(same)
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                raise NotVectorizable(
                    f"the model fails when every chain is at chain {c}'s point although it "
                    f"runs at distinct points: {str(e).splitlines()[0]}") from e
            out[c] = {k: s[c] for k, (s, _) in _factor_sums(trace, self.factors,
                                                             self.num_chains).items()}
        return out, "with every chain at this chain's point"

    def _plain(self, values, c: int, reset) -> dict[str, torch.Tensor]:
        """Chain ``c``'s log density per site, from a plain trace (no chain plate)."""
        data = {name: values[name][c].reshape(site.shape).to(site.dtype)
                for name, site in self.sites.items()}
        reset()
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(poutine.condition(self.model, data=data)).get_trace(
                *self.args, **self.kwargs)
        out = {}
        for name in self.factors:
            if name not in trace.nodes:
                raise _PerChainData
            lp = site_log_prob(trace.nodes[name])
            if torch.is_tensor(lp) and lp.dim() > self.max_plate_nesting:
                raise _PerChainData
            out[name] = torch.as_tensor(lp).sum()
        return out

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


class _PerChainData(Exception):
    """A plain trace of the model carries a chain dimension (data per chain)."""


def value_tolerance(dtype: torch.dtype, scale: float) -> float:
    """How far two evaluations of one log density may differ by rounding alone:
    ``sqrt(eps) * (1 + scale)``, ``eps`` the dtype's machine epsilon and ``scale`` the sum of
    the absolute elementwise log densities (summation order and batched kernels change the
    last bits of each element; any mixing of chains moves the density by far more)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo().eps
    return math.sqrt(eps) * (1.0 + scale)


def _same(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol


def _factor_sums(trace, factors, num_chains) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per site: each chain's summed log density and summed absolute log density."""
    out = {}
    for name in factors:
        flat = site_log_prob(trace.nodes[name]).reshape(num_chains, -1)  # checked shapes
        out[name] = (flat.sum(-1), flat.abs().sum(-1))
    return out


@contextmanager
def _fixed_rng():
    """Yield ``reset``, which restores the random state found on entry (done on exit too)."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def reset():
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    try:
        yield reset
    finally:
        reset()


def describe_nonfinite(chain_model: ChainModel, values, extra: str = "") -> str:
    """``"site 'x' (chains [0, 3])"`` for the first site with a non-finite log density."""
    bad = chain_model.nonfinite_sites(values)
    if not bad:
        return "the log |Jacobian| of the unconstraining transforms" + extra
    name, chains = next(iter(bad.items()))
    return f"site {name!r} (chains {chains})" + extra

