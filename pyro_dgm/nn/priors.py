r"""Weight priors for Bayes-by-Backprop layers (Blundell et al. 2015, "Weight Uncertainty in
Neural Networks", Sec. 3.3).

Every prior is an :class:`torch.nn.Module` whose hyperparameters are *buffers*, so
``layer.to("cuda")`` / ``layer.double()`` move and cast them with the layer, and they appear
in ``state_dict``. A prior provides

- :meth:`WeightPrior.log_prob` -- the elementwise log-density of weights;
- :meth:`WeightPrior.kl_from_normal` -- the elementwise analytic
  :math:`\mathrm{KL}(\mathcal N(\mu, \sigma^2)\,\|\,p)` or ``None`` when there is none
  (the layers then use a Monte Carlo estimate);
- :meth:`WeightPrior.kl_sum_monte_carlo` -- the one-sample estimate the layers use
  otherwise: by default :math:`\log q(w) - \log p(w)`; a prior close in shape to a
  Gaussian :math:`g` can instead estimate
  :math:`\mathrm{KL}(q\|p) = \mathrm{KL}(q\|g) + \mathbb E_q[\log g(w) - \log p(w)]`,
  the first term analytic, the second by Monte Carlo: unbiased too, with far less variance
  where :math:`\log p - \log g` is nearly flat (the scale mixture does this).

Priors:

- :class:`GaussianPrior` :math:`\mathcal N(m, s^2)` (analytic KL);
- :class:`ScaleMixturePrior`
  :math:`\pi\,\mathcal N(0, \sigma_1^2) + (1 - \pi)\,\mathcal N(0, \sigma_2^2)`, evaluated
  with ``logsumexp`` of the two component log-densities, so it stays finite for every
  finite weight (computing it in probability space underflows to ``log 0 = -inf`` once
  :math:`|w| \gtrsim 40\sigma_1`, and gives NaN gradients);
- :class:`DistributionPrior` wrapping any ``torch.distributions`` / Pyro distribution
  (analytic KL when torch has a registered ``kl_divergence`` for Normal against it).

:func:`make_prior` turns a name (``"gaussian"``, ``"scale_mixture"``), a prior, or a
distribution into a prior. Example::

    >>> prior = make_prior("scale_mixture", pi=0.25, sigma1=1.0, sigma2=math.exp(-7))
    >>> prior.log_prob(torch.tensor([1e-30, 1e3]))   # finite
"""

from __future__ import annotations

import math

import torch
import torch.distributions as tdist
from torch import nn

from pyro_dgm._validation import check_choice, check_positive, check_probability

__all__ = [
    "PRIORS",
    "DistributionPrior",
    "GaussianPrior",
    "ScaleMixturePrior",
    "WeightPrior",
    "make_prior",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(w: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    z = (w - loc) / scale
    return -0.5 * z * z - scale.log() - _HALF_LOG_2PI


def _gaussian_kl_sum(loc: torch.Tensor, scale: torch.Tensor, m: torch.Tensor,
                     s: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum \mathrm{KL}(\mathcal N(loc, scale^2) \| \mathcal N(m, s^2))` as
    reductions, n (log s - 1/2) - sum log scale + (sum scale^2 + sum (loc - m)^2) / (2 s^2),
    without materializing the elementwise KL."""
    diff = (loc - m).flatten()
    squares = torch.dot(scale.flatten(), scale.flatten()) + torch.dot(diff, diff)
    return (loc.numel() * (s.log() - 0.5) - scale.log().sum()) + squares / (2 * s * s)


class WeightPrior(nn.Module):
    """Base class: an elementwise (i.i.d.) prior over the entries of a weight tensor."""

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Elementwise log-density, same shape as ``w``."""
        raise NotImplementedError

    def kl_from_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
        """Elementwise :math:`\\mathrm{KL}(\\mathcal N(loc, scale^2) \\| p)`, or ``None``."""
        return None

    def kl_sum_from_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
        """``kl_from_normal(loc, scale).sum()`` (subclasses may compute it with fewer
        temporaries), or ``None`` when there is no closed form."""
        kl = self.kl_from_normal(loc, scale)
        return None if kl is None else kl.sum()

    def kl_sum_monte_carlo(self, loc: torch.Tensor, scale: torch.Tensor,
                           eps: torch.Tensor) -> torch.Tensor:
        r"""One-sample unbiased estimate of :math:`\sum \mathrm{KL}(\mathcal N(loc, scale^2)
        \| p)` at :math:`w = loc + scale \cdot eps`: here
        :math:`\sum \log q(w) - \log p(w)`."""
        log_q = -0.5 * eps * eps - scale.log() - _HALF_LOG_2PI
        return (log_q - self.log_prob(loc + scale * eps)).sum()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.log_prob(w)


class GaussianPrior(WeightPrior):
    r""":math:`w \sim \mathcal N(m, s^2)` with the analytic KL

    .. math:: \mathrm{KL}(\mathcal N(\mu, \sigma^2) \| \mathcal N(m, s^2))
              = \log\frac{s}{\sigma} + \frac{\sigma^2 + (\mu - m)^2}{2 s^2} - \frac12 .

    :param loc: prior mean :math:`m`; :param scale: prior sd :math:`s > 0`.
    """

    def __init__(self, loc: float = 0.0, scale: float = 1.0):
        super().__init__()
        loc = float(loc)
        if not math.isfinite(loc):
            raise ValueError(f"loc must be finite, got {loc}")
        self.register_buffer("loc", torch.tensor(loc))
        self.register_buffer("scale", torch.tensor(check_positive("scale", scale)))

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        return _normal_log_prob(w, self.loc.to(w), self.scale.to(w))

    def kl_from_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        s = self.scale.to(scale)
        diff = loc - self.loc.to(loc)
        return (s.log() - scale.log()) + (scale * scale + diff * diff) / (2 * s * s) - 0.5

    def kl_sum_from_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return _gaussian_kl_sum(loc, scale, self.loc.to(loc), self.scale.to(scale))

    def extra_repr(self) -> str:
        return f"loc={float(self.loc):g}, scale={float(self.scale):g}"


class ScaleMixturePrior(WeightPrior):
    r"""Blundell's scale mixture :math:`\pi\,\mathcal N(0, \sigma_1^2) + (1-\pi)\,
    \mathcal N(0, \sigma_2^2)`, with :math:`\sigma_1 > \sigma_2` by convention (a wide
    component and a spike near zero). No analytic KL: layers use Monte Carlo, with the wide
    component :math:`g = \mathcal N(0, \sigma_1^2)` as control variate,

    .. math:: \mathrm{KL}(q\|p) = \mathrm{KL}(q\|g)
              - \mathbb E_q\log\bigl(\pi + (1-\pi)\,\mathcal N(w; 0, \sigma_2^2)
              / \mathcal N(w; 0, \sigma_1^2)\bigr),

    whose Monte Carlo part is the constant :math:`-\log\pi` away from the spike, so only
    weights near zero add noise (there it is no better than the plain estimate). For scale,
    on the digits benchmark (``docs/bayes_by_backprop.md``) the plain one-sample estimate
    cost a Gaussian prior 1.2 points of test error against its analytic KL.

    The log-density is
    :math:`\operatorname{logsumexp}(\log\pi + \log\mathcal N(w; 0, \sigma_1^2),\;
    \log(1-\pi) + \log\mathcal N(w; 0, \sigma_2^2))`, finite for every finite ``w``; with
    :math:`\pi = 1` it is the Gaussian :math:`\mathcal N(0, \sigma_1^2)`.

    :param pi: mixture weight :math:`\pi \in (0, 1]`. Blundell's grid: 1/4, 1/2, 3/4.
    :param sigma1: wide scale, :math:`-\log\sigma_1 \in \{0, 1, 2\}` in the paper.
    :param sigma2: narrow scale, :math:`-\log\sigma_2 \in \{6, 7, 8\}` in the paper.
    """

    def __init__(self, pi: float = 0.5, sigma1: float = 1.0, sigma2: float = math.exp(-6)):
        super().__init__()
        pi = check_probability("pi", pi, open_right=False)
        self.register_buffer("pi", torch.tensor(pi))
        self.register_buffer("sigma1", torch.tensor(check_positive("sigma1", sigma1)))
        self.register_buffer("sigma2", torch.tensor(check_positive("sigma2", sigma2)))

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        pi = self.pi.to(w)
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        a = pi.log() + _normal_log_prob(w, zero, self.sigma1.to(w))
        b = torch.log1p(-pi) + _normal_log_prob(w, zero, self.sigma2.to(w))
        return torch.logaddexp(a, b)

    def kl_sum_monte_carlo(self, loc: torch.Tensor, scale: torch.Tensor,
                           eps: torch.Tensor) -> torch.Tensor:
        r"""The control-variate estimate of the class docstring at
        :math:`w = loc + scale \cdot eps`."""
        s1 = self.sigma1.to(loc)
        w = loc + scale * eps
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        log_ratio = _normal_log_prob(w, zero, s1) - self.log_prob(w)
        return _gaussian_kl_sum(loc, scale, zero, s1) + log_ratio.sum()

    def extra_repr(self) -> str:
        return (f"pi={float(self.pi):g}, sigma1={float(self.sigma1):g}, "
                f"sigma2={float(self.sigma2):g}")


class DistributionPrior(WeightPrior):
    """Any univariate ``torch.distributions`` or Pyro distribution as an i.i.d. weight prior.

    The distribution's tensor parameters (those in ``arg_constraints`` that were given)
    are stored as buffers and the distribution is rebuilt from them on use, so
    ``.to(device)`` moves it. The KL is analytic when torch registers
    ``kl_divergence(Normal, type(distribution))``, Monte Carlo otherwise.

    :param distribution: e.g. ``torch.distributions.Laplace(0., 0.1)`` or
        ``pyro.distributions.StudentT(3., 0., 1.)``; its ``event_shape`` must be ``()``.
    """

    def __init__(self, distribution: tdist.Distribution):
        super().__init__()
        if not isinstance(distribution, tdist.Distribution):
            raise ValueError(f"distribution must be a torch Distribution, got "
                             f"{type(distribution).__name__}")
        if distribution.event_shape != ():
            raise ValueError("distribution must be univariate (event_shape ()), got "
                             f"{tuple(distribution.event_shape)}")
        self._cls = type(distribution)
        self._names = [k for k in distribution.arg_constraints if k in vars(distribution)
                       and torch.is_tensor(vars(distribution)[k])]
        for k in self._names:
            self.register_buffer(f"param_{k}", vars(distribution)[k].detach().clone())
        self.distribution()  # the class must be rebuildable from its parameters
        try:
            probe = tdist.Normal(torch.zeros(()), torch.ones(()))
            tdist.kl_divergence(probe, self.distribution())
            self._analytic = True
        except NotImplementedError:
            self._analytic = False

    def distribution(self, like: torch.Tensor | None = None) -> tdist.Distribution:
        """The wrapped distribution, its parameters cast to ``like``'s dtype and device."""
        params = {k: getattr(self, f"param_{k}") for k in self._names}
        if like is not None:
            params = {k: v.to(like) for k, v in params.items()}
        return self._cls(**params, validate_args=False)

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        return self.distribution(w).log_prob(w)

    def kl_from_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
        if not self._analytic:
            return None
        return tdist.kl_divergence(tdist.Normal(loc, scale), self.distribution(loc))

    def extra_repr(self) -> str:
        return self._cls.__name__


#: prior names accepted by :func:`make_prior`
PRIORS = {"gaussian": GaussianPrior, "normal": GaussianPrior,
          "scale_mixture": ScaleMixturePrior, "mixture": ScaleMixturePrior}


def make_prior(prior: str | WeightPrior | tdist.Distribution = "gaussian",
               **kwargs) -> WeightPrior:
    """Build a prior from a name in :data:`PRIORS` (``kwargs`` go to its constructor), or
    wrap a distribution, or return a :class:`WeightPrior` unchanged.

    :raises ValueError: unknown name (the message lists the valid ones), bad
        hyperparameters (:math:`\\sigma \\le 0`, :math:`\\pi \\notin (0, 1]`).
    """
    if isinstance(prior, WeightPrior):
        if kwargs:
            raise ValueError("prior hyperparameters go with a prior name, not an instance")
        return prior
    if isinstance(prior, tdist.Distribution):
        return DistributionPrior(prior)
    if not isinstance(prior, str):
        raise ValueError(f"prior must be a name, a WeightPrior or a Distribution, got "
                         f"{type(prior).__name__}")
    check_choice("prior", prior, PRIORS)
    return PRIORS[prior](**kwargs)
