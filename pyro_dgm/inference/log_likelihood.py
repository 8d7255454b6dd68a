r"""Importance-sampled log marginal likelihood, per data point, in bounded memory.

.. math::

    \log \hat p(x_n) = \log \frac1S \sum_{s=1}^S
        \frac{p(x_n, z_{s,n})}{r(z_{s,n} \mid x_n)}, \qquad z_{s,n} \sim r,

with the trained guide as proposal :math:`r = q` (the evaluation of Burda et al. 2015,
:math:`\mathcal L_{5000}`), or the prior :math:`r = p(z)`, when the weights are the
likelihoods :math:`p(x_n \mid z_s)` (the "density network" estimator of MacKay 1995; fine in
a few latent dimensions, hopeless in many). The estimate is a stochastic lower bound of
:math:`\log p(x_n)` whose bias shrinks like :math:`1/S`.

Samples are drawn ``chunk_size`` at a time (one vectorized trace each) and folded into
running log-sum-exps of :math:`\log w` and :math:`2\log w`, so memory does not grow with
``num_samples``. The effective sample size of each data point's weights is
:math:`(\sum_s w_s)^2 / \sum_s w_s^2 \in [1, S]`: far below ``S`` means the proposal misses
the posterior and the estimate is unreliable.

Per data point means over the plates every sample site shares, as for
:class:`~pyro_dgm.inference.IWAE`: with local latents one estimate per row of the data,
with global latents one estimate of the whole data set.

Example::

    >>> est = log_marginal_likelihood(model, guide, x, num_samples=5000)
    >>> est.log_likelihood.shape, est.total, est.ess.min()
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyro_dgm._validation import check_choice, check_int
from pyro_dgm.inference._particles import draw_particles, guess_plate_nesting

__all__ = ["LogLikelihood", "log_marginal_likelihood"]


class LogLikelihood(NamedTuple):
    """Result of :func:`log_marginal_likelihood`."""

    #: per data point (shape of the shared plates; a scalar with global latents)
    log_likelihood: torch.Tensor
    #: effective sample size of each data point's importance weights
    ess: torch.Tensor
    #: number of importance samples per data point
    num_samples: int

    @property
    def total(self) -> torch.Tensor:
        """Sum over the data points: the log likelihood of the data given."""
        return self.log_likelihood.sum()


def log_marginal_likelihood(
    model,
    guide=None,
    *args,
    num_samples: int = 5000,
    chunk_size: int = 500,
    proposal: str = "guide",
    max_plate_nesting: int | None = None,
    vectorize_particles: bool = True,
    **kwargs,
) -> LogLikelihood:
    r"""Importance-sampled :math:`\log p(x)` per data point and the weights' ESS.

    :param model: the model; :param guide: the proposal (ignored for ``proposal="prior"``,
        may then be ``None``).
    :param args: model and guide arguments (the data); ``kwargs`` likewise.
    :param num_samples: importance samples :math:`S` per data point.
    :param chunk_size: samples per vectorized trace; peak memory scales with it, not with
        ``num_samples``.
    :param proposal: ``"guide"`` or ``"prior"``.
    :param max_plate_nesting: plate dims of model and guide (read off one run if omitted).
    :param vectorize_particles: draw a chunk as one vectorized trace (else one trace per
        sample; for models that do not broadcast over a leading dimension).
    :return: :class:`LogLikelihood` with per-point estimates, their ESS and ``S``.
    :raises ValueError: bad sizes or proposal, no guide with ``proposal="guide"``, or a
        subsampled plate outside the per-point plates (global latents), where a minibatch
        gives no estimate of anything.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    proposal = check_choice("proposal", proposal, ("guide", "prior"))
    if proposal == "guide" and guide is None:
        raise ValueError("proposal='guide' needs a guide (or pass proposal='prior')")
    if proposal == "prior":
        guide = None
    if max_plate_nesting is None:
        max_plate_nesting = guess_plate_nesting(model, guide, args, kwargs)
    else:
        max_plate_nesting = check_int("max_plate_nesting", max_plate_nesting, minimum=0)
    log_sum = log_sum_sq = None
    frames = ()
    with torch.no_grad():
        for start in range(0, num_samples, chunk_size):
            size = min(chunk_size, num_samples - start)
            particles = draw_particles(
                model, guide, args, kwargs, num_particles=size,
                max_plate_nesting=max_plate_nesting, vectorize=vectorize_particles,
                proposal=proposal)
            if particles.biased_plates:
                raise ValueError(
                    f"plate(s) {list(particles.biased_plates)} are subsampled but not shared "
                    "by every sample site (global latents): the log likelihood of a "
                    "minibatch is not defined; pass the full data")
            log_w = particles.log_weights
            chunk_sum = torch.logsumexp(log_w, 0)
            chunk_sq = torch.logsumexp(2 * log_w, 0)
            if log_sum is None:
                log_sum, log_sum_sq, frames = chunk_sum, chunk_sq, particles.frames
            else:
                log_sum = torch.logaddexp(log_sum, chunk_sum)
                log_sum_sq = torch.logaddexp(log_sum_sq, chunk_sq)
            del particles, log_w  # free this chunk's traces before drawing the next
    estimate = log_sum - math.log(num_samples)
    ess = (2 * log_sum - log_sum_sq).exp()
    # keep the dims of the shared plates, in order, drop the rest (all of size one)
    shape = [estimate.shape[f.dim] for f in sorted(frames, key=lambda f: f.dim)]
    return LogLikelihood(estimate.reshape(shape), ess.reshape(shape), num_samples)
