import math

import pytest
import torch
import torch.distributions as tdist

from pyro_dgm.nn import (
    BayesLinear,
    DistributionPrior,
    GaussianPrior,
    ScaleMixturePrior,
    bayesianize,
    make_prior,
)


@pytest.mark.parametrize("pi", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("neg_log_s2", [6, 7, 8])
def test_scale_mixture_finite_over_range(dtype, pi, neg_log_s2):
    prior = ScaleMixturePrior(pi, 1.0, math.exp(-neg_log_s2)).to(dtype)
    w = torch.logspace(-30, 3, 200, dtype=dtype)
    w = torch.cat([w, -w, torch.zeros(1, dtype=dtype)]).requires_grad_()
    lp = prior.log_prob(w)
    assert lp.dtype == dtype and bool(torch.isfinite(lp).all())
    lp.sum().backward()
    assert bool(torch.isfinite(w.grad).all())


def test_scale_mixture_matches_probability_space_where_that_is_finite():
    prior = ScaleMixturePrior(0.25, math.exp(-1), math.exp(-7)).double()
    s1, s2 = prior.sigma1, prior.sigma2  # the float32-rounded values, now float64
    w = torch.linspace(-3, 3, 101, dtype=torch.float64)
    n1 = tdist.Normal(0.0, s1).log_prob(w).exp()
    n2 = tdist.Normal(0.0, s2).log_prob(w).exp()
    direct = torch.log(0.25 * n1 + 0.75 * n2)
    torch.testing.assert_close(prior.log_prob(w), direct, rtol=1e-12, atol=1e-12)
    # the naive form underflows at |w| = 1e3 while ours is the Gaussian tail
    big = torch.tensor([1e3], dtype=torch.float64)
    assert torch.isinf(torch.log(0.25 * tdist.Normal(0.0, math.exp(-1)).log_prob(big).exp()))
    expected = math.log(0.25) + tdist.Normal(0.0, s1).log_prob(big)
    torch.testing.assert_close(prior.log_prob(big), expected)


def test_pi_one_is_gaussian():
    w = torch.randn(50, dtype=torch.float64)
    torch.testing.assert_close(ScaleMixturePrior(1.0, 0.3, 0.01).double().log_prob(w),
                               GaussianPrior(0.0, 0.3).double().log_prob(w))


@pytest.mark.parametrize("kwargs, match", [
    (dict(pi=0.0), "pi"), (dict(pi=1.5), "pi"), (dict(pi=-0.1), "pi"),
    (dict(sigma1=0.0), "sigma1"), (dict(sigma2=-1.0), "sigma2"),
    (dict(sigma1=float("nan")), "sigma1"),
])
def test_scale_mixture_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScaleMixturePrior(**kwargs)
    with pytest.raises(ValueError, match=match):
        make_prior("scale_mixture", **kwargs)


def test_gaussian_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        GaussianPrior(0.0, 0.0)
    with pytest.raises(ValueError, match="scale"):
        BayesLinear(2, 2, prior=GaussianPrior(0.0, -1.0))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="gaussian.*scale_mixture"):
        make_prior("laplace")
    with pytest.raises(ValueError, match="reparam, local, flipout"):
        BayesLinear(3, 2, estimator="lrt")
    with pytest.raises(ValueError, match="valid:.*scale_mixture"):
        bayesianize(torch.nn.Linear(2, 2), prior="horseshoe")
    with pytest.raises(ValueError, match="reparam, local, flipout"):
        bayesianize(torch.nn.Linear(2, 2), estimator="bad")


def test_distribution_prior_analytic_and_mc():
    normal = DistributionPrior(tdist.Normal(torch.tensor(0.0), torch.tensor(0.5)))
    loc, scale = torch.randn(7), torch.rand(7) + 0.1
    torch.testing.assert_close(normal.kl_from_normal(loc, scale),
                               GaussianPrior(0.0, 0.5).kl_from_normal(loc, scale))
    student = make_prior(tdist.StudentT(torch.tensor(3.0), torch.tensor(0.0), 0.1))
    assert student.kl_from_normal(loc, scale) is None  # no closed form: layers use MC
    laplace = make_prior(tdist.Laplace(torch.tensor(0.0), torch.tensor(0.1)))
    w = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(laplace.double().log_prob(w),
                               tdist.Laplace(0.0, 0.1).log_prob(w).double())
    with pytest.raises(ValueError, match="univariate"):
        DistributionPrior(tdist.MultivariateNormal(torch.zeros(2), torch.eye(2)))


def test_prior_hyperparameters_are_buffers():
    layer = BayesLinear(3, 2, prior="scale_mixture").double()
    names = dict(layer.named_buffers())
    assert {"prior.pi", "prior.sigma1", "prior.sigma2"} <= set(names)
    assert all(b.dtype == torch.float64 for b in names.values())
    assert set(layer.state_dict()) >= {"prior.pi", "weight_mu", "weight_rho"}
