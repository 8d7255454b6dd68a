r"""Bayes-by-Backprop layers: drop-in ``nn.Linear`` / ``nn.Conv{1,2,3}d`` with a Gaussian
posterior over every weight and bias (Blundell et al. 2015, "Weight Uncertainty in Neural
Networks").

Each weight has the variational posterior :math:`q(w) = \mathcal N(\mu, \sigma^2)` with
:math:`\sigma = \operatorname{softplus}(\rho) = \log(1 + e^\rho)`. ``forward`` returns a
tensor (never an ``(output, kl)`` tuple), so the layers compose with ``nn.Sequential``;
the KL term is asked for separately (:meth:`BayesLayer.kl_divergence`, or
:func:`pyro_dgm.nn.kl_divergence` summed over a network).

Gradient estimators (``estimator=``), for a pre-activation :math:`a = w^\top x + b`:

- ``"reparam"`` (Blundell et al. 2015): one :math:`w = \mu + \sigma\odot\varepsilon` per
  forward call, shared by the whole minibatch.
- ``"local"`` (local reparameterization, Kingma, Salimans & Welling 2015): samples the
  pre-activations directly, :math:`a = \mu^\top x + \mu_b + \sqrt{(\sigma^2)^\top x^2 +
  \sigma_b^2}\,\zeta` with independent :math:`\zeta \sim \mathcal N(0, 1)` per example and
  unit; lower variance, but no weight sample exists (the weights are implicitly independent
  per example).
- ``"flipout"`` (Wen et al. 2018): one shared perturbation :math:`\Delta = \sigma\odot
  \varepsilon`, decorrelated across examples by random signs,
  :math:`a_n = \mu^\top x_n + ((\Delta^\top (x_n \odot s_n)) \odot r_n) + b`, with
  :math:`s_n, r_n \in \{\pm1\}` (per channel for convolutions); the bias noise is shared.

All three give every pre-activation the exact marginal mean :math:`\mu^\top x + \mu_b` and
variance :math:`(\sigma^2)^\top x^2 + \sigma_b^2` (for convolutions, over the receptive
field).

KL: analytic (Gaussian prior, or a distribution with a registered Normal KL); otherwise the
prior's one-sample Monte Carlo estimate (``WeightPrior.kl_sum_monte_carlo``: plain
:math:`\log q(w) - \log p(w)`, or with a Gaussian control variate for the scale mixture) at
a fresh :math:`w = \mu + \sigma\odot\varepsilon` (weight noise drawn before bias noise).

Initialization: :math:`\mu` as ``nn.Linear``/``nn.Conv`` (Kaiming-uniform weights, uniform
bias on :math:`\pm 1/\sqrt{\text{fan\_in}}`); :math:`\rho = \log(e^{\sigma_0} - 1)` for every
entry, so all posterior sds start at ``init_sigma`` :math:`\sigma_0` (default ``1e-3``,
close to the deterministic network at first; Blundell et al. start small as well).
``bayesianize(..., init_from_weights=True)`` instead sets :math:`\mu` to trained weights.

Example::

    >>> layer = BayesLinear(20, 10, prior="scale_mixture", estimator="flipout")
    >>> y = layer(torch.randn(32, 20))           # a tensor, new weight noise on every call
    >>> loss = y.pow(2).mean() + layer.kl_divergence() / 1000
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _ntuple

from pyro_dgm._shared import inverse_softplus
from pyro_dgm._validation import check_choice, check_int, check_positive
from pyro_dgm.nn.priors import WeightPrior, make_prior

__all__ = ["ESTIMATORS", "BayesConv1d", "BayesConv2d", "BayesConv3d", "BayesLayer",
           "BayesLinear"]

#: gradient estimators a layer accepts
ESTIMATORS = ("reparam", "local", "flipout")


def _random_sign(shape, like: torch.Tensor) -> torch.Tensor:
    # randint is several times cheaper than bernoulli_ on CPU
    signs = torch.randint(0, 2, shape, dtype=like.dtype, device=like.device)
    return signs.mul_(2).sub_(1)


class BayesLayer(nn.Module):
    """Shared machinery: parameters ``weight_mu``, ``weight_rho``, ``bias_mu``,
    ``bias_rho``, a prior submodule, the estimator and the KL.

    ``layer.sampling = False`` makes the layer use the posterior means (a deterministic
    network); :func:`pyro_dgm.nn.use_posterior_mean` does that for a whole network.
    """

    def _setup(self, weight_shape, bias: bool, prior, estimator: str, init_sigma: float,
               factory: dict) -> None:
        self.estimator = check_choice("estimator", estimator, ESTIMATORS)
        self.init_sigma = check_positive("init_sigma", init_sigma)
        self.prior = prior if isinstance(prior, WeightPrior) else make_prior(prior)
        self.sampling = True
        self.weight_mu = nn.Parameter(torch.empty(weight_shape, **factory))
        self.weight_rho = nn.Parameter(torch.empty(weight_shape, **factory))
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(weight_shape[0], **factory))
            self.bias_rho = nn.Parameter(torch.empty(weight_shape[0], **factory))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Means as ``nn.Linear``/``nn.Conv``; every posterior sd equal to ``init_sigma``."""
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        rho = inverse_softplus(float(self.init_sigma))
        nn.init.constant_(self.weight_rho, rho)
        if self.bias_mu is not None:
            fan_in = self.weight_mu[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias_mu, -bound, bound)
            nn.init.constant_(self.bias_rho, rho)

    @property
    def weight_sigma(self) -> torch.Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> torch.Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def _pairs(self):
        yield self.weight_mu, self.weight_rho
        if self.bias_mu is not None:
            yield self.bias_mu, self.bias_rho

    def kl_divergence(self) -> torch.Tensor:
        """:math:`\\mathrm{KL}(q \\| p)` summed over weights and bias: analytic when the prior
        has it, else one Monte Carlo sample (see the module docstring)."""
        total = 0.0
        for mu, rho in self._pairs():
            sigma = F.softplus(rho)
            kl = self.prior.kl_sum_from_normal(mu, sigma)
            if kl is None:
                kl = self.prior.kl_sum_monte_carlo(mu, sigma, torch.randn_like(mu))
            total = total + kl
        return total

    # ---- the linear map, implemented by subclasses -------------------------------------
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def _sign_shape(self, x: torch.Tensor) -> tuple:
        """Shape of per-example, per-channel random signs broadcasting against ``x``."""
        return x.shape[:2] + (1,) * (x.dim() - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu_w, mu_b = self.weight_mu, self.bias_mu
        if not self.sampling:
            return self._op(x, mu_w, mu_b)
        sigma_w = F.softplus(self.weight_rho)
        sigma_b = None if self.bias_rho is None else F.softplus(self.bias_rho)
        if self.estimator == "reparam":
            w = mu_w + sigma_w * torch.randn_like(mu_w)
            b = None if mu_b is None else mu_b + sigma_b * torch.randn_like(mu_b)
            return self._op(x, w, b)
        if self.estimator == "local":
            mean = self._op(x, mu_w, mu_b)
            var = self._op(x * x, sigma_w * sigma_w,
                           None if sigma_b is None else sigma_b * sigma_b)
            tiny = torch.finfo(var.dtype).tiny
            return mean + var.clamp_min(tiny).sqrt() * torch.randn_like(mean)
        # flipout
        mean = self._op(x, mu_w, None)
        delta = sigma_w * torch.randn_like(mu_w)
        perturbed = self._op(x * _random_sign(self._sign_shape(x), x), delta, None)
        out = mean + perturbed * _random_sign(self._sign_shape(perturbed), perturbed)
        if mu_b is not None:
            b = mu_b + sigma_b * torch.randn_like(mu_b)
            out = out + self._bias_view(b, out)
        return out

    def _bias_view(self, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return b.reshape((-1,) + (1,) * (out.dim() - 2))


class BayesLinear(BayesLayer):
    """Bayesian ``nn.Linear(in_features, out_features, bias)``: input ``(*, in_features)``.

    :param prior: a name (``"gaussian"``, ``"scale_mixture"``), a
        :class:`~pyro_dgm.nn.priors.WeightPrior`, or a univariate distribution.
    :param estimator: ``"reparam"``, ``"local"`` or ``"flipout"``.
    :param init_sigma: initial posterior sd of every weight and bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 prior="gaussian", estimator: str = "reparam", init_sigma: float = 1e-3,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.out_features = check_int("out_features", out_features, minimum=1)
        self._setup((self.out_features, self.in_features), bias, prior, estimator,
                    init_sigma, {"device": device, "dtype": dtype})

    def _op(self, x, w, b):
        return F.linear(x, w, b)

    def _sign_shape(self, x):
        return x.shape

    def _bias_view(self, b, out):
        return b

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias_mu is not None}, estimator={self.estimator!r}")


class _BayesConvNd(BayesLayer):
    _dims = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, prior="gaussian", estimator: str = "reparam",
                 init_sigma: float = 1e-3, device=None, dtype=None):
        super().__init__()
        tup = _ntuple(self._dims)
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.out_channels = check_int("out_channels", out_channels, minimum=1)
        self.groups = check_int("groups", groups, minimum=1)
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        self.kernel_size, self.stride, self.dilation = tup(kernel_size), tup(stride), \
            tup(dilation)
        self.padding = padding if isinstance(padding, str) else tup(padding)
        self.padding_mode = check_choice("padding_mode", padding_mode,
                                         ["zeros", "reflect", "replicate", "circular"])
        if self.padding_mode != "zeros" and isinstance(self.padding, str):
            raise ValueError("string padding needs padding_mode='zeros'")
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._setup(shape, bias, prior, estimator, init_sigma,
                    {"device": device, "dtype": dtype})
        self._conv = (None, F.conv1d, F.conv2d, F.conv3d)[self._dims]

    def _op(self, x, w, b):
        padding = self.padding
        if self.padding_mode != "zeros":
            pad = [p for p in reversed(self.padding) for _ in range(2)]
            x = F.pad(x, pad, mode=self.padding_mode)
            padding = 0
        return self._conv(x, w, b, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"bias={self.bias_mu is not None}, estimator={self.estimator!r}")


class BayesConv1d(_BayesConvNd):
    """Bayesian ``nn.Conv1d`` (same arguments, plus ``prior``, ``estimator``,
    ``init_sigma`` as :class:`BayesLinear`)."""

    _dims = 1


class BayesConv2d(_BayesConvNd):
    """Bayesian ``nn.Conv2d`` (same arguments, plus ``prior``, ``estimator``,
    ``init_sigma`` as :class:`BayesLinear`)."""

    _dims = 2


class BayesConv3d(_BayesConvNd):
    """Bayesian ``nn.Conv3d`` (same arguments, plus ``prior``, ``estimator``,
    ``init_sigma`` as :class:`BayesLinear`)."""

    _dims = 3
