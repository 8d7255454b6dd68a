r"""Per-data-point log weights of particles, shared by the importance-weighted objectives
and the evidence estimator.

One pass runs the guide under a vectorized plate over ``K`` particles, replays the model
against it and reduces every site's log density to *per-data-point log weights*

.. math::

    \log w_{k,n} = \log p(x_n, z_{k,n}) - \log q(z_{k,n} \mid x_n),

a tensor of shape ``(K, *plates)``: dimension 0 holds the particles, the other dimensions
are Pyro's plate dimensions (``max_plate_nesting`` of them), of full size for the plates that
**every** sample site of model and guide sits in (the *weight plates*) and of size one
elsewhere (summed out). Observations normally sit in the data plate, so the weight plates are
the plates all latent sites share; a site outside them (a global latent, or an observed site
that pools several data points) leaves a single whole-data weight per particle.

The subsample scale ``N/B`` of the weight plates is *not* applied to the log weights: it is
returned as :attr:`Particles.scale`, for the objectives to apply after their nonlinearity
(log-sum-exp), which keeps a minibatch estimate unbiased for the full-data bound. Scales of
other plates or of ``poutine.scale`` stay inside.

The traces themselves come from :class:`~pyro_dgm.inference._trace_pass.TracePass` (which
also re-scores the guide for the STL and DReG estimators); this module reduces them and
holds :class:`ParticleObjective`, the base of :class:`~pyro_dgm.inference.IWAE` and
:class:`~pyro_dgm.inference.PerturbativeELBO` (Burda, Grosse & Salakhutdinov 2016; Bamler
et al. 2017).

Example::

    >>> particles = draw_particles(model, guide, (x,), {}, num_particles=16,
    ...                            max_plate_nesting=1)
    >>> particles.log_weights.shape                    # (16, N): per data point
    >>> bound = torch.logsumexp(particles.log_weights, 0) - math.log(16)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.distributions.util import is_identically_one, scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.util import check_site_shape

from pyro_dgm._validation import check_int
from pyro_dgm.inference._trace_pass import (
    PARTICLE_PLATE,
    TracePass,
    WeightHolder,
    check_reparam,
    sample_sites,
    traced_log_prob,
)

__all__ = [
    "PARTICLE_PLATE",
    "BiasedSubsampleWarning",
    "NonFiniteLossError",
    "ParticleObjective",
    "Particles",
    "draw_particles",
    "guess_plate_nesting",
]


class BiasedSubsampleWarning(UserWarning):
    """A subsampled plate lies outside the per-data-point weight plates (global latents):
    the minibatch estimate of an importance-weighted bound is then biased."""


class NonFiniteLossError(ValueError):
    """The objective is NaN or infinite; the message names the offending sample sites."""


@dataclass
class Particles:
    """Per-data-point log weights of ``K`` particles and what produced them."""

    #: ``(K, *plates)`` log weights, shared subsample scale not applied
    log_weights: torch.Tensor
    #: ``N/B`` of the weight plates (1.0 without subsampling)
    scale: float
    #: ``(K, *plates)`` log density of non-reparameterized guide sites (for score terms)
    score_log_q: torch.Tensor | None = None
    #: site label -> its reduced log-density term, for error messages
    terms: dict = field(default_factory=dict)
    #: the weight plates
    frames: tuple = ()
    #: subsampled plates outside the weight plates
    biased_plates: tuple = ()
    #: DReG's gradient-scaling weights, to be set by the objective
    holder: WeightHolder | None = None
    #: the guide trace (of the first particle, when sequential): the particles' values
    guide_trace: object = None

    def check_finite(self, value: float, what: str) -> None:
        """Raise :class:`NonFiniteLossError` naming the sites if ``value`` is not finite."""
        if math.isfinite(value):
            return
        bad = [label for label, term in self.terms.items()
               if not bool(torch.isfinite(term.detach()).all())]
        where = (f"non-finite log density at site(s) {', '.join(bad)}" if bad else
                 "every site's log density is finite, so the weights over- or underflow")
        raise NonFiniteLossError(f"{what} is {value}: {where}")


def _frames(site) -> frozenset:
    return frozenset(f for f in site["cond_indep_stack"]
                     if f.vectorized and f.name != PARTICLE_PLATE)


def _reduce(log_prob, keep: frozenset, ndim: int) -> torch.Tensor:
    """Sum a site's log density to ``ndim`` dims, keeping the dims in ``keep`` (negative)."""
    if not torch.is_tensor(log_prob):
        log_prob = torch.as_tensor(log_prob)
    extra = log_prob.dim() - ndim
    if extra > 0:
        log_prob = log_prob.sum(tuple(range(extra)))
    elif extra < 0:
        log_prob = log_prob.reshape((1,) * -extra + log_prob.shape)
    dims = tuple(d for d in range(-ndim, 0) if d not in keep and log_prob.shape[d] != 1)
    return log_prob.sum(dims, keepdim=True) if dims else log_prob


def _plate_nesting(sites) -> int:
    """How many plate dims the (name, site) pairs use."""
    return max((-f.dim for _, s in sites for f in s["cond_indep_stack"] if f.vectorized),
               default=0)


def _one_pass(p: TracePass, *, proposal: str, require_reparam: str | None):
    model_trace, guide_trace, values = p.run(proposal)
    if guide_trace is not None and require_reparam is not None:
        check_reparam(guide_trace, require_reparam)
    model_sites = sample_sites(model_trace)
    guide_sites = sample_sites(guide_trace) if guide_trace is not None else []
    all_sites = model_sites + guide_sites
    if p.ndim is None:  # sequential particles and unknown nesting: read it off the trace
        p.max_plate_nesting = _plate_nesting(all_sites)
        p.ndim = p.max_plate_nesting + 1
    frames = frozenset.intersection(*(_frames(s) for _, s in all_sites)) if all_sites \
        else frozenset()
    shared_scale = 1.0
    for f in frames:
        if f.full_size is not None and f.full_size != f.size:
            shared_scale *= f.full_size / f.size
    biased = sorted({f.name for _, s in all_sites for f in s["cond_indep_stack"]
                     if f.name != PARTICLE_PLATE and f.full_size is not None
                     and f.full_size != f.size and f not in frames})
    keep = frozenset({-p.ndim} | {f.dim for f in frames})
    validate = is_validation_enabled()

    def term(site, log_prob):
        if validate:
            check_site_shape({**site, "log_prob": log_prob}, p.max_plate_nesting)
        scale = site["scale"]
        if shared_scale != 1.0:
            scale = scale / shared_scale
            if not torch.is_tensor(scale) and abs(scale - 1.0) < 1e-12:
                scale = 1.0
        if not is_identically_one(scale) or site["mask"] is not None:
            log_prob = scale_and_mask(log_prob, scale, site["mask"])
        return _reduce(log_prob, keep, p.ndim)

    terms = {}
    log_w = 0.0
    for name, site in model_sites:
        if proposal == "prior" and not site["is_observed"]:
            continue  # drawn from the prior: its density cancels
        t = term(site, traced_log_prob(site))
        terms[f"'{name}' (model)"] = t
        log_w = log_w + t
    score_log_q = None
    if guide_trace is not None:
        rescored = p.rescored_guide(guide_trace, values) if p.rescore is not None else {}
        for name, site in guide_sites:
            log_q = rescored.get(name)
            if log_q is None:
                log_q = traced_log_prob(site)
            t = term(site, log_q)
            terms[f"'{name}' (guide)"] = t
            if site["is_observed"] or site["fn"].has_rsample:
                log_w = log_w - t
            else:  # the score-function term carries this site's gradient
                log_w = log_w - t.detach()
                score_log_q = t if score_log_q is None else score_log_q + t
    if not torch.is_tensor(log_w):
        raise ValueError("the model has no sample sites to weight")
    return Particles(log_w, shared_scale, score_log_q, terms, tuple(frames), tuple(biased),
                     p.holder, guide_trace)


def guess_plate_nesting(model, guide, args: tuple, kwargs: dict) -> int:
    """Plate dims of ``model`` (replayed against ``guide`` when given), from one run."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs) if guide else None
        replayed = poutine.replay(model, trace=guide_trace) if guide else model
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    return _plate_nesting(sample_sites(model_trace)
                          + (sample_sites(guide_trace) if guide else []))


def draw_particles(
    model,
    guide,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    max_plate_nesting: int | None,
    vectorize: bool = True,
    rescore: str | None = None,
    require_reparam: str | None = None,
    proposal: str = "guide",
) -> Particles:
    """Draw ``num_particles`` particles and return their per-data-point log weights.

    :param max_plate_nesting: plate dims of model and guide, *not* counting the particles;
        ``None`` reads it off the traces (only without vectorization).
    :param vectorize: one trace under a particle plate, even for one particle (else one
        trace per particle).
    :param rescore: ``None``, ``"stl"`` (guide density with parameters fixed) or
        ``"dreg"`` (also scale the sample's gradient by the normalized weights).
    :param require_reparam: raise ``ValueError`` naming this objective if a guide site is
        not reparameterizable.
    :param proposal: ``"guide"`` or ``"prior"`` (no guide: latents from the model's prior,
        weights are the likelihoods of the observed sites).
    """
    holder = WeightHolder() if rescore == "dreg" else None
    vectorized = bool(vectorize)
    if max_plate_nesting is None and vectorized:
        raise ValueError("max_plate_nesting is needed to vectorize particles")
    ndim = None if max_plate_nesting is None else max_plate_nesting + 1
    results = []
    for k in range(1 if vectorized else num_particles):
        p = TracePass(model, guide, args, kwargs,
                      plate_size=num_particles if vectorized else None, ndim=ndim,
                      rescore=rescore, holder=holder, index=None if vectorized else k,
                      max_plate_nesting=ndim if vectorized else max_plate_nesting)
        results.append(_one_pass(p, proposal=proposal, require_reparam=require_reparam))
        ndim, max_plate_nesting = p.ndim, p.max_plate_nesting  # known after the first pass
    first = results[0]
    if len(results) > 1:  # sequential particles: stack them along dim 0
        first.log_weights = torch.cat([r.log_weights for r in results])
        if first.score_log_q is not None:
            first.score_log_q = torch.cat([r.score_log_q for r in results])
        first.terms = {k: torch.cat([r.terms[k] for r in results]) for k in first.terms}
    return first


class ParticleObjective(ELBO):
    """Base of the importance-weighted objectives: particles, plate nesting, the three
    entry points of :class:`pyro.infer.ELBO` (``loss``, ``loss_and_grads``,
    ``differentiable_loss``), the non-finite check and the subsampling warning.

    Subclasses implement :meth:`_bound`, the (scaled) lower bound as a differentiable
    scalar, from :class:`Particles`."""

    def __init__(self, num_particles: int, *, vectorize_particles: bool = True,
                 max_plate_nesting: float = float("inf"), retain_graph: bool | None = None):
        num_particles = check_int("num_particles", num_particles, minimum=1)
        if max_plate_nesting != float("inf"):
            max_plate_nesting = check_int("max_plate_nesting", max_plate_nesting, minimum=0)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=bool(vectorize_particles),
                         retain_graph=retain_graph)

    # -- plumbing ------------------------------------------------------------------------
    @property
    def _vectorized(self) -> bool:
        return self.vectorize_particles and self.num_particles > 1

    @property
    def _user_plate_nesting(self) -> int | None:
        if self.max_plate_nesting == float("inf"):
            return None
        return int(self.max_plate_nesting) - (1 if self._vectorized else 0)

    def _rescore(self) -> str | None:
        return None

    def _require_reparam(self) -> str | None:
        return None

    def _draw(self, model, guide, args, kwargs, *, grad: bool) -> Particles:
        if self.max_plate_nesting == float("inf") and self._vectorized:
            self.max_plate_nesting = guess_plate_nesting(model, guide, args, kwargs) + 1
        particles = draw_particles(
            model, guide, args, kwargs, num_particles=self.num_particles,
            max_plate_nesting=self._user_plate_nesting, vectorize=self._vectorized,
            rescore=self._rescore() if grad else None, require_reparam=self._require_reparam())
        if particles.biased_plates and self.num_particles > 1:
            warnings.warn(
                f"{type(self).__name__}: plate(s) {list(particles.biased_plates)} are "
                "subsampled but not shared by every sample site (global latents), so the "
                "bound covers the whole data set and its minibatch estimate is biased; use "
                "full batches, num_particles=1, or a guide whose latents are all local",
                BiasedSubsampleWarning, stacklevel=4)
        return particles

    def _bound(self, particles: Particles) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get_trace(self, model, guide, args, kwargs):
        """One (model, guide) trace pair, as other :class:`~pyro.infer.ELBO` s return it."""
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    # -- ELBO interface ------------------------------------------------------------------
    def loss(self, model, guide, *args, **kwargs) -> float:
        """Estimate of the negative bound (a float); no gradients."""
        with torch.no_grad():
            particles = self._draw(model, guide, args, kwargs, grad=False)
            value = -float(self._bound(particles))
        particles.check_finite(value, f"{type(self).__name__} loss")
        return value

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative bound as a differentiable tensor (``ELBOModule.forward``).

        Its gradient is the chosen estimator's. With Pyro validation enabled a non-finite
        value raises :class:`NonFiniteLossError` (a host sync); otherwise no sync."""
        particles = self._draw(model, guide, args, kwargs, grad=True)
        loss = -self._bound(particles)
        if is_validation_enabled():
            particles.check_finite(float(loss.detach()), f"{type(self).__name__} loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Estimate the negative bound and accumulate its gradient into the parameters."""
        particles = self._draw(model, guide, args, kwargs, grad=True)
        loss = -self._bound(particles)
        value = float(loss.detach())
        particles.check_finite(value, f"{type(self).__name__} loss")
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return value
