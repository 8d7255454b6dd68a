r"""One pass of the particle machinery: the guide traced under a vectorized particle plate,
the model replayed against it, and for the path-derivative estimators the guide re-scored.

:class:`TracePass` runs ``guide`` (or, with ``proposal="prior"``, only the model) under
Pyro's plate ``num_particles_vectorized`` of ``K`` particles and returns the trace pair
that :mod:`pyro_dgm.inference._particles` reduces to per-data-point log weights
:math:`\log w_{k,n} = \log p(x_n, z_{k,n}) - \log q(z_{k,n} \mid x_n)`.

For the path-derivative estimators (STL, Roeder et al. 2017; DReG, Tucker et al. 2019) the
guide density is re-evaluated with its parameters held fixed (``rescore="stl"``): a guide
with a single sample site by subtracting its score,
:math:`\log q(z) - \log q(\bar z) + \operatorname{sg}\log q(\bar z)` with :math:`\bar z`
the detached value; otherwise by re-running the guide conditioned on the drawn values with
every guide parameter's ``requires_grad`` switched off. ``rescore="dreg"`` additionally
routes the values the densities see through :class:`_GradScale`, which multiplies the
gradient flowing back into the guide's sample by the normalized importance weight
:math:`\tilde w_k` (set by the objective in :class:`WeightHolder` once the weights are
known): together with the :math:`\tilde w_k` of the log-sum-exp this gives DReG's
:math:`\tilde w_k^2`.

Example::

    >>> p = TracePass(model, guide, (x,), {}, plate_size=16, ndim=2, rescore="stl",
    ...               holder=None, index=None, max_plate_nesting=2)
    >>> model_trace, guide_trace, values = p.run("guide")
    >>> log_q = p.rescored_guide(guide_trace, values)   # site -> log q, parameters fixed
"""

from __future__ import annotations

import warnings

import pyro
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match

from pyro_dgm.inference.flows.base import NotInvertibleError

__all__ = [
    "PARTICLE_PLATE",
    "TracePass",
    "WeightHolder",
    "check_reparam",
    "sample_sites",
    "traced_log_prob",
]

#: Name of the vectorized particle plate (Pyro's own, so models that look for it still work).
PARTICLE_PLATE = "num_particles_vectorized"


class WeightHolder:
    """Normalized importance weights ``(K, *plates)``, filled in by the objective after the
    forward pass (DReG)."""

    __slots__ = ("weights",)

    def __init__(self):
        self.weights: torch.Tensor | None = None


def _align(weights: torch.Tensor, batch_ndim: int, event_dim: int) -> torch.Tensor:
    """Reshape ``(..., *plates)`` weights to broadcast against a site's value.

    Dimensions left of the value's batch shape have size one (they are not weight plates,
    which every site has), so they are dropped."""
    extra = weights.dim() - batch_ndim
    if extra > 0:
        weights = weights.reshape(weights.shape[extra:])
    elif extra < 0:
        weights = weights.reshape((1,) * -extra + weights.shape)
    return weights.reshape(weights.shape + (1,) * event_dim)


class _GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by the holder's weights."""

    @staticmethod
    def forward(ctx, value, holder, index, batch_ndim, event_dim):
        ctx.holder, ctx.index, ctx.batch_ndim, ctx.event_dim = holder, index, batch_ndim, event_dim
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        weights = ctx.holder.weights
        if ctx.index is not None:  # sequential particles: this trace is particle `index`
            weights = weights[ctx.index]
        return grad * _align(weights, ctx.batch_ndim, ctx.event_dim), None, None, None, None


def sample_sites(trace) -> list:
    """``(name, site)`` of the trace's sample sites, subsample sites left out."""
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)]


def traced_log_prob(site, value=None) -> torch.Tensor:
    """Unscaled log density of a traced site at its value (or at ``value``)."""
    value = site["value"] if value is None else value
    return site["fn"].log_prob(value, *site["args"], **site["kwargs"])


def _guide_leaves(guide, guide_trace) -> list[torch.Tensor]:
    """Leaf tensors behind the guide's parameters (param store and module parameters)."""
    leaves = {}
    for site in guide_trace.nodes.values():
        if site["type"] == "param":
            value = site["value"]
            unconstrained = getattr(value, "unconstrained", None)
            leaf = unconstrained() if unconstrained is not None else value
            if leaf is not None:
                leaves[id(leaf)] = leaf
    if isinstance(guide, torch.nn.Module):
        for p in guide.parameters():
            leaves[id(p)] = p
    return [p for p in leaves.values() if p.is_leaf and p.requires_grad]


#: what a distribution raises when asked to score a value it did not just sample: Pyro's
#: cached transforms (KeyError, NotImplementedError) and this package's flows
_CANNOT_SCORE = (KeyError, NotImplementedError, NotInvertibleError)


def _score_error(name: str, error: Exception) -> ValueError:
    return ValueError(
        f"STL/DReG need a guide that can score any value, but the guide's distribution at "
        f"site '{name}' cannot re-score its own sample ({type(error).__name__}: {error}); "
        "flows without an inverse (planar, radial, Sylvester) only score values they just "
        "produced. Use an invertible flow, or estimator='iwae'.")


class TracePass:
    """One guide/model trace pair (``plate_size`` particles at dim ``-ndim``, or one
    particle ``index`` of a sequential run when ``plate_size`` is ``None``)."""

    def __init__(self, model, guide, args, kwargs, *, plate_size, ndim, rescore, holder,
                 index, max_plate_nesting):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.plate_size, self.ndim = plate_size, ndim
        self.rescore, self.holder, self.index = rescore, holder, index
        self.max_plate_nesting = max_plate_nesting

    def _plated(self, fn):
        if self.plate_size is None:
            return fn
        return pyro.plate(PARTICLE_PLATE, self.plate_size, dim=-self.ndim)(fn)

    def run(self, proposal: str):
        """``(model_trace, guide_trace, values)``: the model replayed against the guide (or
        alone with ``proposal="prior"``, no guide trace) and, when re-scoring, the guide's
        latent values as the re-scored densities must see them (else ``{}``)."""
        if proposal == "prior":
            model_trace = poutine.trace(self._plated(self.model)).get_trace(
                *self.args, **self.kwargs)
            return model_trace, None, {}
        guide_trace = poutine.trace(self._plated(self.guide)).get_trace(
            *self.args, **self.kwargs)
        values = {}
        if self.rescore is not None:
            for name, site in sample_sites(guide_trace):
                if site["is_observed"]:
                    continue
                value = site["value"]
                if self.holder is not None and value.requires_grad:
                    value = _GradScale.apply(value, self.holder, self.index,
                                             len(site["fn"].batch_shape), site["fn"].event_dim)
                else:
                    value = value.view_as(value)  # a fresh tensor: no flow-cache hits
                values[name] = value
            replay = poutine.Trace()
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    replay.add_node(name, **{**site, "value": values.get(name, site["value"])})
        else:
            replay = guide_trace
        model_trace = poutine.trace(poutine.replay(self._plated(self.model), trace=replay)
                                    ).get_trace(*self.args, **self.kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        return model_trace, guide_trace, values

    def rescored_guide(self, guide_trace, values) -> dict:
        """Log densities of the guide sites at ``values`` with the guide's parameters fixed."""
        sites = [(n, s) for n, s in sample_sites(guide_trace) if not s["is_observed"]]
        if len(sites) == 1:  # one site: subtract its score, no second guide run
            name, site = sites[0]
            value = values[name]
            try:
                log_q = traced_log_prob(site, value)
                detached = traced_log_prob(site, value.detach())
            except _CANNOT_SCORE as e:
                raise _score_error(name, e) from e
            return {name: log_q - detached + detached.detach()}
        data = dict(values)
        data.update({name: site["value"] for name, site in guide_trace.nodes.items()
                     if site["type"] == "sample" and site_is_subsample(site)})
        leaves = _guide_leaves(self.guide, guide_trace)
        for p in leaves:
            p.requires_grad_(False)
        try:
            with poutine.block(), warnings.catch_warnings():
                # pyro.module notices the frozen parameters; they are not new, nothing to say
                warnings.filterwarnings("ignore", message=".*not registered in the param store")
                trace = poutine.trace(poutine.condition(self._plated(self.guide), data=data)
                                      ).get_trace(*self.args, **self.kwargs)
            out = {}
            for name, _ in sites:
                site = trace.nodes[name]
                try:
                    out[name] = traced_log_prob(site)
                except _CANNOT_SCORE as e:
                    raise _score_error(name, e) from e
            return out
        finally:
            for p in leaves:
                p.requires_grad_(True)


def check_reparam(guide_trace, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` if a latent guide site has no ``rsample``."""
    for name, site in sample_sites(guide_trace):
        if site["is_observed"]:
            continue
        if not site["fn"].has_rsample:
            raise ValueError(
                f"{what} needs reparameterized guide sites, but site '{name}' "
                f"({type(site['fn']).__name__}) has no rsample")
