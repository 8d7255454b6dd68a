r"""Training and prediction helpers for Bayes-by-Backprop networks in plain PyTorch.

The negative ELBO of a network with weights :math:`w` on :math:`N` examples is

.. math:: \mathcal L = \mathrm{KL}(q(w) \| p(w)) - \sum_{n=1}^N \mathbb E_q \log p(y_n|x_n,w).

With the data split into :math:`M` minibatches :math:`B_i`, Blundell et al. (2015, Sec. 3.4)
minimize :math:`\mathcal F_i = \pi_i\,\mathrm{KL} - \sum_{n \in B_i} \log p(y_n|x_n, w)`
with :math:`\sum_i \pi_i = 1`, so that :math:`\sum_i \mathcal F_i = \mathcal L`; either
:math:`\pi_i = 1/M` or :math:`\pi_i = 2^{M-i}/(2^M - 1)` (early batches of an epoch weigh
the prior more). :func:`bbb_loss` returns :math:`\mathcal F_i / |B_i|` -- the *mean* NLL
plus the scaled KL -- so learning rates stay those of ordinary training:

- default (``kl_weight=None``): mean NLL + KL/N, an unbiased estimate of
  :math:`\mathcal L / N` whatever the batch size;
- ``kl_weight=blundell_kl_weight(i, M)``: mean NLL + :math:`\pi_i` KL / :math:`|B_i|`.

:func:`kl_divergence` *sums* the KL of all Bayesian layers (never averages over layers or
weights). :func:`predict` averages ``num_samples`` stochastic forward passes and splits
the predictive uncertainty (Depeweg et al. 2018; Kendall & Gal 2017).

Example::

    >>> for i, (x, y) in enumerate(loader):
    ...     nll = F.cross_entropy(net(x), y, reduction="none")
    ...     loss = bbb_loss(nll, kl_divergence(net), num_data=len(dataset))
    ...     opt.zero_grad(); loss.backward(); opt.step()
    >>> pred = predict(net, x_test, num_samples=50)      # .probs, .entropy, ...
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pyro_dgm._validation import check_choice, check_int, check_positive
from pyro_dgm.nn.bayes_layers import BayesLayer

__all__ = [
    "ClassificationPrediction",
    "RegressionPrediction",
    "bayes_layers",
    "bbb_loss",
    "blundell_kl_weight",
    "kl_divergence",
    "predict",
    "use_posterior_mean",
]


def bayes_layers(net: nn.Module) -> Iterator[BayesLayer]:
    """Every :class:`~pyro_dgm.nn.BayesLayer` inside ``net`` (``net`` included)."""
    return (m for m in net.modules() if isinstance(m, BayesLayer))


def kl_divergence(net: nn.Module) -> torch.Tensor:
    """Sum of :meth:`BayesLayer.kl_divergence` over all Bayesian layers of ``net``.

    :raises ValueError: when ``net`` has no Bayesian layer.
    """
    layers = list(bayes_layers(net))
    if not layers:
        raise ValueError("net has no Bayesian layers (use bayesianize or BayesLinear)")
    total = layers[0].kl_divergence()
    for layer in layers[1:]:
        total = total + layer.kl_divergence()
    return total


def blundell_kl_weight(batch_index: int, num_batches: int) -> float:
    r""":math:`\pi_i = 2^{M-i}/(2^M - 1)` for batch ``batch_index`` :math:`= i - 1`
    (0-based) of :math:`M` ``num_batches``; the weights of one epoch sum to one."""
    m = check_int("num_batches", num_batches, minimum=1)
    i = check_int("batch_index", batch_index, minimum=0, maximum=m - 1) + 1
    return 2.0 ** -i / -math.expm1(-m * math.log(2.0))  # = 2^{-i} / (1 - 2^{-M})


def bbb_loss(nll: torch.Tensor, kl: torch.Tensor, *, num_data: int,
             kl_weight: float | None = None) -> torch.Tensor:
    r"""Per-example minibatch loss :math:`\overline{\mathrm{NLL}} + w\,\mathrm{KL}/|B|`.

    :param nll: per-example negative log-likelihoods of the batch, shape ``(B,)`` (e.g.
        ``F.cross_entropy(..., reduction="none")``).
    :param kl: the network's KL (:func:`kl_divergence`), a sum over all weights.
    :param num_data: :math:`N`, the size of the training set.
    :param kl_weight: :math:`\pi_i`; default :math:`|B|/N` (i.e. the loss is mean NLL +
        KL/N). Pass :func:`blundell_kl_weight` for Blundell's schedule, or ``1/M``.
    """
    num_data = check_int("num_data", num_data, minimum=1)
    if nll.dim() != 1:
        raise ValueError(f"nll must hold one value per example (shape (B,)), got "
                         f"{tuple(nll.shape)}")
    batch = nll.shape[0]
    if kl_weight is None:
        return nll.mean() + kl / num_data
    check_positive("kl_weight", kl_weight, strict=False)
    return nll.mean() + kl * (kl_weight / batch)


@contextlib.contextmanager
def use_posterior_mean(net: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, Bayesian layers use their posterior means (no sampling)."""
    layers = list(bayes_layers(net))
    before = [layer.sampling for layer in layers]
    try:
        for layer in layers:
            layer.sampling = not enabled
        yield net
    finally:
        for layer, flag in zip(layers, before, strict=True):
            layer.sampling = flag


class ClassificationPrediction(NamedTuple):
    """``probs`` (B, C): predictive mean; ``entropy``: :math:`H[\\bar p]` (total);
    ``expected_entropy``: :math:`\\mathbb E_w H[p(\\cdot|w)]` (aleatoric);
    ``mutual_information``: their difference (epistemic); ``samples``: (S, B, C) probs."""

    probs: torch.Tensor
    entropy: torch.Tensor
    expected_entropy: torch.Tensor
    mutual_information: torch.Tensor
    samples: torch.Tensor


class RegressionPrediction(NamedTuple):
    """``mean`` (B, D); ``variance`` = ``aleatoric`` (mean noise variance) + ``epistemic``
    (variance of the sampled means); ``samples``: (S, B, D) sampled means."""

    mean: torch.Tensor
    variance: torch.Tensor
    aleatoric: torch.Tensor
    epistemic: torch.Tensor
    samples: torch.Tensor


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(torch.special.xlogy(p, p)).sum(-1)


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, num_samples: int = 100, *,
            likelihood: str = "categorical", noise_scale: float | torch.Tensor | None = None,
            heteroscedastic: bool = False):
    r"""Monte Carlo predictive distribution from ``num_samples`` forward passes.

    The network is put in ``eval`` mode for the call (dropout/batch-norm frozen; Bayesian
    layers still sample) and restored afterwards.

    - ``likelihood="categorical"``: ``net`` returns logits; returns
      :class:`ClassificationPrediction`, with mutual information
      :math:`H[\bar p] - \mathbb E_w H[p]` as the epistemic part.
    - ``likelihood="gaussian"``: ``net`` returns means (B, D) and the noise sd is
      ``noise_scale``; or with ``heteroscedastic=True`` it returns (B, 2D): means and
      pre-softplus sds. Returns :class:`RegressionPrediction` with aleatoric
      :math:`\mathbb E_w \sigma^2` and epistemic :math:`\mathrm{Var}_w\,\mu`.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    check_choice("likelihood", likelihood, ["categorical", "gaussian"])
    if likelihood == "gaussian" and noise_scale is None and not heteroscedastic:
        raise ValueError("gaussian likelihood: pass noise_scale or heteroscedastic=True")
    was_training = net.training
    net.eval()
    try:
        out = torch.stack([net(x) for _ in range(num_samples)])
    finally:
        net.train(was_training)
    if likelihood == "categorical":
        probs = F.softmax(out, dim=-1)
        mean = probs.mean(0)
        entropy = _entropy(mean)
        expected = _entropy(probs).mean(0)
        return ClassificationPrediction(mean, entropy, expected,
                                        (entropy - expected).clamp_min(0), probs)
    if heteroscedastic:
        if out.shape[-1] % 2:
            raise ValueError("heteroscedastic: the network must return 2*D columns")
        mu, raw = out.chunk(2, dim=-1)
        aleatoric = F.softplus(raw).pow(2).mean(0)
    else:
        mu = out
        scale = torch.as_tensor(noise_scale, dtype=out.dtype, device=out.device)
        if bool((scale <= 0).any()):
            raise ValueError("noise_scale must be > 0")
        aleatoric = (scale * scale).expand(mu.shape[1:])
    mean = mu.mean(0)
    epistemic = mu.var(0, unbiased=False)
    return RegressionPrediction(mean, aleatoric + epistemic, aleatoric, epistemic, mu)
