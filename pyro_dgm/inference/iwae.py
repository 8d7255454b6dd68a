r"""The importance-weighted bound (IWAE) with IWAE, STL and DReG gradient estimators.

For ``K`` particles :math:`z_{1..K} \sim q(z \mid x)` and weights
:math:`w_k = p(x, z_k)/q(z_k \mid x)` (Burda, Grosse & Salakhutdinov 2015),

.. math::

    \mathcal L_K = \mathbb E\Big[\log \frac1K \sum_{k=1}^K w_k\Big]
    \;\le\; \mathcal L_{K+1} \;\le\; \log p(x),
    \qquad \mathcal L_1 = \text{ELBO}.

**Per data point.** The log-sum-exp is taken separately for every data point, over the
plates that every sample site shares (the plates all latent sites sit in, when observations
sit in them too): with local latents :math:`\sum_n \log \frac1K\sum_k w_{k,n}`, the sum of
the per-point bounds, which is tighter than a bound on the whole data set with the same
``K``. Under plate subsampling (``pyro.plate("data", N, subsample=idx)``) the scale
:math:`N/B` is applied *after* the log-sum-exp, so the minibatch estimate is unbiased for
the full-data bound (Pyro's ``RenyiELBO`` puts it inside and is biased).

**Global latents.** A latent site outside the data plate couples the data points: there is
one weight per particle for the whole data set, :math:`\log\frac1K\sum_k\prod_n w_{k,n}`,
which is the bound Pyro's ``RenyiELBO`` computes. A minibatch estimate of it is biased for
``K > 1``, and :class:`IWAE` warns (:class:`BiasedSubsampleWarning`) when a plate outside
the per-point plates is subsampled.

**Gradients** (``estimator``), with :math:`\tilde w_k = w_k / \sum_j w_j`:

- ``"iwae"``: the gradient of the estimate,
  :math:`\sum_k \tilde w_k \nabla \log w_k`; reparameterized sites by the path, other guide
  sites by the score function with VIMCO's leave-one-out baselines (Mnih & Rezende 2016).
- ``"stl"`` (sticking the landing, Roeder, Wu & Duvenaud 2017): the guide density is
  evaluated with its parameters held fixed, so the guide gradient is the path derivative
  :math:`\sum_k \tilde w_k\, \partial_z \log w_k\, \partial_\phi z_k`. Zero variance at the
  exact posterior; biased for the IWAE bound when ``K > 1``.
- ``"dreg"`` (doubly reparameterized, Tucker, Lawson, Gu & Maddison 2018): unbiased guide
  gradient :math:`\sum_k \tilde w_k^2\, \partial_z \log w_k\, \partial_\phi z_k`, whose
  signal-to-noise ratio does not decay with ``K``. Model gradients as ``"iwae"``.

STL and DReG need every guide site reparameterized, and a guide that can score any value
(invertible flows do; planar/radial/Sylvester flows do not).

Example::

    >>> iwae = IWAE(num_particles=50, estimator="dreg", max_plate_nesting=1)
    >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), iwae)
    >>> svi.step(x)                                   # -IWAE_50, gradients accumulated
    >>> module = iwae(model, guide)                   # an nn.Module: loss = module(x)
"""

from __future__ import annotations

import math

import torch
from pyro.poutine.util import site_is_subsample

from pyro_dgm._validation import check_choice, check_int
from pyro_dgm.inference._particles import (
    PARTICLE_PLATE,
    ParticleObjective,
    Particles,
    draw_particles,
    guess_plate_nesting,
)

__all__ = ["IWAE", "importance_resample", "iwae_bound", "vimco_signals"]

ESTIMATORS = ("iwae", "stl", "dreg")


def iwae_bound(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    r""":math:`\log \frac1K \sum_k \exp(\log w_k)` along ``dim`` (the particles)."""
    return torch.logsumexp(log_weights, dim) - math.log(log_weights.shape[dim])


def vimco_signals(log_weights: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    r"""Learning signals of the score-function terms, ``(K, ...)``, detached.

    With leave-one-out baselines (Mnih & Rezende 2016, VIMCO):
    :math:`\hat L - \hat L_{-k} - \tilde w_k`, where :math:`\hat L_{-k}` replaces
    :math:`\log w_k` by the mean of the other log weights and :math:`-\tilde w_k` accounts
    for the weights' own dependence on :math:`\log q(z_k)` (the sites' log densities enter
    the weights detached). For ``K = 1`` the signal is :math:`\hat L` itself, the
    REINFORCE term of ``Trace_ELBO``.
    """
    log_weights, bound = log_weights.detach(), bound.detach()
    K = log_weights.shape[0]
    if K == 1:
        return bound.expand_as(log_weights)
    others = (log_weights.sum(0, keepdim=True) - log_weights) / (K - 1)  # (K, ...)
    eye = torch.eye(K, dtype=torch.bool, device=log_weights.device)
    eye = eye.reshape((K, K) + (1,) * (log_weights.dim() - 1))
    # row k: the log weights with entry k replaced by the mean of the others
    replaced = torch.where(eye, others.unsqueeze(1), log_weights.unsqueeze(0))
    leave_one_out = iwae_bound(replaced, dim=1)
    weights = torch.softmax(log_weights, 0)
    return bound - leave_one_out - weights


class IWAE(ParticleObjective):
    r"""Importance-weighted bound for Pyro's ``SVI`` (see the module docstring for the math).

    :param num_particles: ``K >= 1``; ``K = 1`` is ``Trace_ELBO`` (same value and gradient).
    :param estimator: ``"iwae"``, ``"stl"`` or ``"dreg"``.
    :param vectorize_particles: run the particles as one vectorized trace (else ``K``
        sequential traces; the same estimates, for models that do not broadcast).
    :param max_plate_nesting: plate dims of model and guide (guessed from one run when
        omitted).
    :param retain_graph: passed to ``backward`` in :meth:`loss_and_grads`.

    ``loss``/``loss_and_grads`` return :math:`-N/B \sum_{n\in B} \log\frac1K\sum_k w_{k,n}`;
    ``differentiable_loss`` returns it as a tensor, so ``IWAE(...)(model, guide)`` is an
    ``nn.Module`` for plain PyTorch training loops, Lightning or DDP.

    :raises ValueError: ``num_particles < 1``, an unknown estimator, ``"stl"``/``"dreg"``
        with a non-reparameterizable guide site; :class:`NonFiniteLossError` (a
        ``ValueError``) when the loss is not finite, naming the sites at fault.

    Reference: Burda, Grosse & Salakhutdinov (2015), *Importance Weighted Autoencoders*;
    Tucker, Lawson, Gu & Maddison (2018), *Doubly Reparameterized Gradient Estimators for
    Monte Carlo Objectives*; Roeder, Wu & Duvenaud (2017), *Sticking the Landing*.
    """

    def __init__(
        self,
        num_particles: int = 8,
        estimator: str = "iwae",
        vectorize_particles: bool = True,
        max_plate_nesting: float = float("inf"),
        retain_graph: bool | None = None,
    ):
        super().__init__(num_particles, vectorize_particles=vectorize_particles,
                         max_plate_nesting=max_plate_nesting, retain_graph=retain_graph)
        self.estimator = check_choice("estimator", estimator, ESTIMATORS)

    def __repr__(self) -> str:
        return f"IWAE(num_particles={self.num_particles}, estimator={self.estimator!r})"

    def _rescore(self):
        return None if self.estimator == "iwae" else self.estimator

    def _require_reparam(self):
        return None if self.estimator == "iwae" else f"IWAE(estimator={self.estimator!r})"

    def _bound(self, particles: Particles) -> torch.Tensor:
        log_w = particles.log_weights
        bound = iwae_bound(log_w)
        if particles.holder is not None:  # DReG: the sample's gradient gets another w~
            particles.holder.weights = torch.softmax(log_w.detach(), 0)
        total = bound.sum()
        score = particles.score_log_q
        if score is not None and score.requires_grad:
            signals = vimco_signals(log_w, bound)
            total = total + (signals * (score - score.detach())).sum()
        return total * particles.scale if particles.scale != 1.0 else total


def _natural_shape(site) -> torch.Size:
    """A vectorized site's value shape without the particle dim and plate padding."""
    dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE]
    batch = site["fn"].batch_shape
    keep = max(dims, default=0)
    return batch[len(batch) - keep:] + site["fn"].event_shape if keep else site["fn"].event_shape


def importance_resample(
    model,
    guide,
    *args,
    num_samples: int = 1000,
    num_particles: int = 8,
    chunk_size: int = 100,
    max_plate_nesting: int | None = None,
    **kwargs,
) -> dict[str, torch.Tensor]:
    r"""Sampling-importance-resampled draws: the posterior that IWAE's bound implies.

    Each draw takes ``num_particles`` (:math:`K`) fresh guide samples and keeps one with
    probability :math:`\tilde w_k \propto p(x, z_k)/q(z_k)`. Its law
    :math:`q_{IW}` is closer to the posterior than :math:`q` and tends to it as
    :math:`K \to \infty`; :math:`\log p(x) - \mathrm{IWAE}_K` bounds
    :math:`\mathrm{KL}(q_{IW} \| p)` from above (Cremer, Morris & Duvenaud 2017).
    With local latents each data point is resampled on its own weights; with global
    latents one index per draw picks the whole joint sample.

    :param model: the model; :param guide: the trained guide (the proposal).
    :param args: model/guide arguments (the data); ``kwargs`` likewise.
    :param num_samples: draws returned; :param num_particles: :math:`K` per draw.
    :param chunk_size: draws per vectorized trace (``chunk_size * K`` guide samples).
    :param max_plate_nesting: plate dims of model and guide (read off one run if omitted).
    :return: latent site name -> ``(num_samples, *site_shape)`` tensor (plate padding
        dropped, as in ``Predictive``).
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    num_particles = check_int("num_particles", num_particles, minimum=1)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    if max_plate_nesting is None:
        max_plate_nesting = guess_plate_nesting(model, guide, args, kwargs)
    draws: dict[str, list[torch.Tensor]] = {}
    K = num_particles
    with torch.no_grad():
        for start in range(0, num_samples, chunk_size):
            size = min(chunk_size, num_samples - start)
            particles = draw_particles(model, guide, args, kwargs, num_particles=size * K,
                                       max_plate_nesting=max_plate_nesting)
            log_w = particles.log_weights  # (size * K, *plates)
            plates = log_w.shape[1:]
            logits = log_w.reshape((size, K) + plates).movedim(1, -1)
            index = torch.distributions.Categorical(logits=logits).sample()  # (size, *plates)
            for name, site in particles.guide_trace.nodes.items():
                if (site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]
                        or site["infer"].get("is_auxiliary")):
                    continue
                value = site["value"]
                rest = value.shape[1:]
                event_dim = value.dim() - 1 - len(plates)
                idx = index.reshape((size, 1) + plates + (1,) * event_dim)
                picked = value.reshape((size, K) + rest).gather(
                    1, idx.expand((size, 1) + rest)).squeeze(1)
                shape = _natural_shape(site)
                draws.setdefault(name, []).append(picked.reshape((size,) + shape))
    return {name: torch.cat(parts) for name, parts in draws.items()}
