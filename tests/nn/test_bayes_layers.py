import math

import pytest
import torch
import torch.nn.functional as F

from pyro_dgm.nn import (
    ESTIMATORS,
    BayesConv1d,
    BayesConv2d,
    BayesConv3d,
    BayesLinear,
    GaussianPrior,
    ScaleMixturePrior,
    inverse_softplus,
    kl_divergence,
    use_posterior_mean,
)


def _randomize(layer, dtype, sigma_range=(0.2, 0.6)):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mu, rho in [(layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)]:
            if mu is None:
                continue
            mu.copy_(torch.randn(mu.shape, generator=gen, dtype=torch.float64))
            lo, hi = sigma_range
            sig = lo + (hi - lo) * torch.rand(mu.shape, generator=gen, dtype=torch.float64)
            rho.copy_(inverse_softplus(sig))
    return layer.to(dtype)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_preactivation_moments_match_analytic(dtype, estimator, kind):
    if kind == "linear":
        layer = BayesLinear(4, 3, estimator=estimator)
        x = torch.tensor([[0.5, -1.0, 2.0, 0.1]])
    else:
        layer = BayesConv2d(2, 2, 2, estimator=estimator)
        x = torch.linspace(-1, 1, 2 * 3 * 3).reshape(1, 2, 3, 3)
    layer = _randomize(layer, dtype)
    x = x.to(dtype)
    num = 3000
    with torch.no_grad():
        draws = torch.stack([layer(x) for _ in range(num)])
        op = layer._op
        mean = op(x, layer.weight_mu, layer.bias_mu)
        var = op(x * x, layer.weight_sigma ** 2, layer.bias_sigma ** 2)
    sd = var.sqrt()
    # pre-activations are exactly Gaussian under all three estimators: 5-sigma MC bounds
    mean_err = (draws.mean(0) - mean).abs() / (sd / math.sqrt(num))
    var_err = (draws.var(0) - var).abs() / (var * math.sqrt(2 / (num - 1)))
    assert float(mean_err.max()) < 5 and float(var_err.max()) < 5


def test_flipout_decorrelates_examples():
    layer = _randomize(BayesLinear(3, 1, bias=False, estimator="flipout"), torch.float64)
    x = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64).expand(2, 3)
    with torch.no_grad():
        draws = torch.stack([layer(x)[:, 0] for _ in range(3000)])
    corr = torch.corrcoef(draws.T)[0, 1]
    assert abs(float(corr)) < 5 / math.sqrt(3000)
    layer.estimator = "reparam"  # shared weights: fully correlated
    with torch.no_grad():
        draws = torch.stack([layer(x)[:, 0] for _ in range(200)])
    assert float(torch.corrcoef(draws.T)[0, 1]) > 0.999


def test_gaussian_kl_equals_hand_computed_sum():
    layer = _randomize(BayesLinear(3, 2, prior=GaussianPrior(0.1, 0.7)), torch.float64)
    m, s = float(layer.prior.loc), float(layer.prior.scale)
    expected = 0.0
    for mu_t, rho_t in [(layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)]:
        for mu, rho in zip(mu_t.flatten().tolist(), rho_t.flatten().tolist(), strict=True):
            sig = math.log1p(math.exp(rho))
            expected += math.log(s / sig) + (sig ** 2 + (mu - m) ** 2) / (2 * s ** 2) - 0.5
    torch.testing.assert_close(layer.kl_divergence(), torch.tensor(expected,
                               dtype=torch.float64), rtol=1e-13, atol=0)


def _log_normal(w, m, s):
    return -0.5 * ((w - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)


def test_scale_mixture_mc_kl_equals_hand_computed_sum():
    """The control-variate estimate, KL(q || N(0, s1^2)) analytic plus
    log N(w; 0, s1^2) - log p(w) at the drawn weights, computed by hand."""
    layer = _randomize(BayesLinear(3, 2, prior=ScaleMixturePrior(0.25, 1.0, math.exp(-6))),
                       torch.float64)
    pi, s1, s2 = (float(layer.prior.pi), float(layer.prior.sigma1), float(layer.prior.sigma2))
    torch.manual_seed(3)
    actual = layer.kl_divergence()
    torch.manual_seed(3)  # documented order: weight noise, then bias noise
    expected = 0.0
    for mu_t, rho_t in [(layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)]:
        eps = torch.randn_like(mu_t)
        for mu, rho, e in zip(mu_t.flatten().tolist(), rho_t.flatten().tolist(),
                              eps.flatten().tolist(), strict=True):
            sig = math.log1p(math.exp(rho))
            w = mu + sig * e
            log_p = math.log(pi * math.exp(_log_normal(w, 0, s1))
                             + (1 - pi) * math.exp(_log_normal(w, 0, s2)))
            kl_wide = math.log(s1 / sig) + (sig ** 2 + mu ** 2) / (2 * s1 ** 2) - 0.5
            expected += kl_wide + _log_normal(w, 0, s1) - log_p
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)


def _quadrature_kl(mu, sig, log_p, half_width=12.0, n=200_001):
    """KL(N(mu, sig^2) || p) by the trapezoid rule on mu +- half_width sd (float64)."""
    w = torch.linspace(mu - half_width * sig, mu + half_width * sig, n, dtype=torch.float64)
    log_q = -0.5 * ((w - mu) / sig) ** 2 - math.log(sig) - 0.5 * math.log(2 * math.pi)
    return float(torch.trapezoid(log_q.exp() * (log_q - log_p(w)), w))


@pytest.mark.parametrize("mu,sig,bulk", [(0.3, 0.05, True), (-1.2, 0.4, True),
                                         (0.0, 0.02, False), (0.004, 0.001, False)])
def test_scale_mixture_mc_kl_is_unbiased(mu, sig, bulk):
    """Draw by draw, the control-variate estimate averages to the quadrature KL within
    5 standard errors (in the bulk, at zero within the spike's reach, inside the spike);
    in the bulk its variance is far below the plain estimate log q(w) - log p(w)."""
    prior = ScaleMixturePrior(0.5, 1.0, math.exp(-6)).double()
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(n, generator=gen, dtype=torch.float64)
    loc = torch.full((n,), mu, dtype=torch.float64)
    scale = torch.full((n,), sig, dtype=torch.float64)
    w = loc + scale * eps
    kl_wide = math.log(1.0 / sig) + (sig ** 2 + mu ** 2) / 2 - 0.5
    per_draw = kl_wide + _log_normal(w, 0.0, 1.0) - prior.log_prob(w)
    torch.testing.assert_close(prior.kl_sum_monte_carlo(loc, scale, eps), per_draw.sum(),
                               rtol=1e-10, atol=0)
    se = float(per_draw.std()) / math.sqrt(n)
    exact = _quadrature_kl(mu, sig, prior.log_prob)
    assert abs(float(per_draw.mean()) - exact) < 5 * se + 1e-6
    if bulk:
        plain = _log_normal(w, mu, sig) - prior.log_prob(w)
        assert float(per_draw.var()) < 0.02 * float(plain.var())


def test_network_kl_is_a_sum_over_layers():
    net = torch.nn.Sequential(BayesLinear(3, 4), torch.nn.Tanh(), BayesLinear(4, 2))
    total = kl_divergence(net)
    torch.testing.assert_close(total, net[0].kl_divergence() + net[2].kl_divergence())
    with pytest.raises(ValueError, match="no Bayesian layers"):
        kl_divergence(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("cls, shape, kwargs", [
    (BayesConv1d, (2, 3, 9), dict(padding=2, dilation=2, padding_mode="circular")),
    (BayesConv2d, (2, 4, 7, 7), dict(stride=2, padding=1, groups=2)),
    (BayesConv3d, (2, 3, 5, 5, 5), dict(padding=1, padding_mode="replicate")),
])
def test_conv_posterior_mean_matches_torch_conv(cls, shape, kwargs, dtype):
    layer = cls(shape[1], 4, 3, **kwargs, dtype=dtype)
    ref_cls = {BayesConv1d: torch.nn.Conv1d, BayesConv2d: torch.nn.Conv2d,
               BayesConv3d: torch.nn.Conv3d}[cls]
    ref = ref_cls(shape[1], 4, 3, **kwargs, dtype=dtype)
    with torch.no_grad():
        ref.weight.copy_(layer.weight_mu)
        ref.bias.copy_(layer.bias_mu)
    x = torch.randn(shape, dtype=dtype)
    with use_posterior_mean(layer):
        torch.testing.assert_close(layer(x), ref(x))
    for est in ESTIMATORS:
        layer.estimator = est
        y = layer(x)
        assert y.shape == ref(x).shape and y.dtype == dtype
        y.sum().backward()
        assert bool(torch.isfinite(layer.weight_rho.grad).all())


def test_initialization_is_documented():
    layer = BayesLinear(100, 50, init_sigma=0.02)
    torch.testing.assert_close(layer.weight_sigma, torch.full((50, 100), 0.02))
    assert float(layer.weight_mu.detach().abs().max()) <= 1 / math.sqrt(100) + 1e-6
    torch.testing.assert_close(F.softplus(inverse_softplus(torch.tensor([1e-6, 30.0]))),
                               torch.tensor([1e-6, 30.0]))
    with pytest.raises(ValueError, match="init_sigma"):
        BayesLinear(2, 2, init_sigma=0.0)


def test_local_reparam_handles_zero_input():
    layer = BayesLinear(3, 2, bias=False, estimator="local")
    y = layer(torch.zeros(4, 3))
    y.sum().backward()
    assert bool(torch.isfinite(layer.weight_rho.grad).all())


def test_multidimensional_linear_input():
    for est in ESTIMATORS:
        layer = BayesLinear(3, 2, estimator=est)
        assert layer(torch.randn(4, 5, 3)).shape == (4, 5, 2)
