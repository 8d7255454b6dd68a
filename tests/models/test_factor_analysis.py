import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_dgm.models import (
    ExactPosteriorGuide,
    FactorAnalysis,
    fa_log_marginal,
    fa_posterior,
)


def _fixed_fa(p=5, q=2, n=40, seed=0, dtype=torch.float64, device="cpu"):
    gen = FactorAnalysis(p, q, dtype=dtype).to(device)
    data = gen.simulate(n, seed=seed)
    fa = FactorAnalysis(p, q, loc=data.loc, W=data.W, psi=data.psi).to(device)
    return fa, data


def test_log_marginal_matches_multivariate_normal(device):
    fa, d = _fixed_fa(p=7, q=3, n=50, device=device)
    cov = d.W @ d.W.T + torch.diag(d.psi)
    expected = torch.distributions.MultivariateNormal(d.loc, cov).log_prob(d.x).sum()
    actual = fa_log_marginal(d.x, d.loc, d.W, d.psi).sum()
    assert abs(float(actual - expected)) < 1e-8


def test_posterior_matches_gaussian_conditioning(device):
    fa, d = _fixed_fa(p=6, q=2, n=10, device=device)
    # joint Gaussian of (z, x): conditioning through the full covariance
    cov_x = d.W @ d.W.T + torch.diag(d.psi)
    gain = d.W.T @ torch.linalg.inv(cov_x)
    mean_expected = (d.x - d.loc) @ gain.T
    cov_expected = torch.eye(2, dtype=d.x.dtype, device=device) - gain @ d.W
    mean, cov = fa_posterior(d.x, d.loc, d.W, d.psi)
    assert torch.allclose(mean, mean_expected, atol=1e-10)
    assert torch.allclose(cov, cov_expected, atol=1e-10)


def test_trace_elbo_with_exact_guide_is_log_evidence_for_every_draw():
    fa, d = _fixed_fa(p=5, q=2, n=40)
    guide = ExactPosteriorGuide(fa)
    exact = fa_log_marginal(d.x, d.loc, d.W, d.psi).sum()
    elbo = Trace_ELBO()
    for _ in range(10):
        assert abs(-elbo.loss(fa, guide, d.x) - float(exact)) < 1e-8
    vectorized = Trace_ELBO(num_particles=16, vectorize_particles=True)
    assert abs(-vectorized.loss(fa, guide, d.x) - float(exact)) < 1e-8


def test_exact_guide_under_subsampling_is_unbiased_scaled():
    fa, d = _fixed_fa(p=4, q=2, n=30)
    guide = ExactPosteriorGuide(fa)
    idx = torch.arange(10)
    exact_batch = fa_log_marginal(d.x[idx], d.loc, d.W, d.psi).sum() * 30 / 10
    assert abs(-Trace_ELBO().loss(fa, guide, d.x, subsample=idx) - float(exact_batch)) < 1e-8
    # the batch passed directly, with num_data
    value = -Trace_ELBO().loss(fa, guide, d.x[idx], subsample=idx, num_data=30)
    assert abs(value - float(exact_batch)) < 1e-8


@pytest.mark.parametrize("marginalize", [False, True])
def test_bayesian_fa_trains_with_svi_in_dtype(dtype, marginalize):
    fa = FactorAnalysis(4, 2, marginalize_latents=marginalize, dtype=dtype)
    x = fa.simulate(50, seed=1).x
    guide = AutoNormal(fa)
    svi = pyro.infer.SVI(fa, guide, pyro.optim.Adam({"lr": 0.02}),
                         Trace_ELBO(num_particles=2, vectorize_particles=True))
    losses = [svi.step(x) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert all(p.dtype == dtype for p in pyro.get_param_store().values())


def test_marginalized_model_density_is_fa_marginal():
    fa = FactorAnalysis(5, 2, marginalize_latents=True)
    d = fa.simulate(20, seed=3)
    cond = pyro.poutine.condition(fa, data={
        "W_diag": d.W.diagonal(), "W_lower": d.W[tuple(torch.tril_indices(5, 2, -1))],
        "psi": d.psi, "loc": d.loc})
    trace = pyro.poutine.trace(cond).get_trace(d.x)
    trace.compute_log_prob()
    expected = fa_log_marginal(d.x, d.loc, d.W, d.psi).sum()
    assert torch.allclose(trace.nodes["x"]["log_prob_sum"], expected, atol=1e-6)


def test_w_is_lower_triangular_with_positive_diagonal():
    fa = FactorAnalysis(5, 3)
    trace = pyro.poutine.trace(fa).get_trace(num_data=4)
    W = fa.assemble_W(trace.nodes["W_diag"]["value"], trace.nodes["W_lower"]["value"])
    assert torch.equal(W, W.tril())
    assert bool((W.diagonal() > 0).all())
    assert trace.nodes["W_lower"]["value"].shape == (fa.num_lower,) == (3 * 4 - 3,)
    # batched assembly keeps the batch dims
    batched = fa.assemble_W(torch.ones(7, 1, 3), torch.zeros(7, 1, fa.num_lower))
    assert batched.shape == (7, 1, 5, 3)


def test_simulate_is_reproducible_and_follows_dtype(dtype):
    fa = FactorAnalysis(6, 2, dtype=dtype)
    a, b = fa.simulate(30, seed=5), fa.simulate(30, seed=5)
    assert torch.equal(a.x, b.x) and a.x.dtype == dtype and a.x.shape == (30, 6)
    assert bool((a.psi > 0).all())


def test_simulate_recovers_covariance_in_large_samples():
    fa, d = _fixed_fa(p=4, q=2, n=20000, seed=2)
    sample_cov = torch.cov(d.x.T)
    cov = d.W @ d.W.T + torch.diag(d.psi)
    assert torch.allclose(sample_cov, cov, atol=0.1 * float(cov.abs().max()))


def test_leader_order_picks_strong_loaders_first():
    W = torch.tensor([[0.05, 0.0], [2.0, 0.1], [0.1, 1.5], [0.3, 0.2]], dtype=torch.float64)
    fa = FactorAnalysis(4, 2, loc=torch.zeros(4), W=W, psi=torch.full((4,), 0.1))
    x = fa.simulate(2000, seed=0).x
    order = FactorAnalysis.leader_order(x, 2).tolist()
    assert order[:2] == [1, 2] and sorted(order) == [0, 1, 2, 3]


@pytest.mark.parametrize("bad, name", [
    (torch.tensor([[float("nan"), 0.0, 0.0]]), "x"),
    (torch.tensor([[float("inf"), 0.0, 0.0]]), "x"),
    (torch.zeros(4, 2), "3 columns"),
    (torch.zeros(3), "2-dimensional"),
])
def test_bad_data_raises_value_error_naming_it(bad, name):
    fa = FactorAnalysis(3, 1)
    with pytest.raises(ValueError, match=name):
        fa(bad)


@pytest.mark.parametrize("kwargs, name", [
    (dict(obs_dim=3, latent_dim=0), "latent_dim"),
    (dict(obs_dim=3, latent_dim=4), "latent_dim"),
    (dict(obs_dim=0, latent_dim=1), "obs_dim"),
    (dict(obs_dim=3, latent_dim=1, w_scale=-1.0), "w_scale"),
    (dict(obs_dim=3, latent_dim=1, W=torch.zeros(2, 1)), "W"),
    (dict(obs_dim=3, latent_dim=1, psi=-torch.ones(3)), "psi"),
])
def test_bad_arguments_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FactorAnalysis(**kwargs)


def test_exact_guide_needs_fixed_parameters():
    with pytest.raises(ValueError, match="fixed"):
        ExactPosteriorGuide(FactorAnalysis(3, 1))


def test_fa_marginal_distribution_matches_multivariate_normal_batched(dtype):
    from pyro_dgm.models import FAMarginal

    torch.manual_seed(0)
    loc = torch.randn(3, 1, 5, dtype=dtype)
    W = torch.randn(3, 1, 5, 2, dtype=dtype)
    psi = torch.rand(3, 1, 5, dtype=dtype) + 0.1
    x = torch.randn(3, 7, 5, dtype=dtype)
    d = FAMarginal(loc, W, psi)
    assert d.batch_shape == (3, 1) and d.event_shape == (5,)
    ref = torch.distributions.MultivariateNormal(loc, d.covariance_matrix)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.allclose(d.log_prob(x), ref.log_prob(x), atol=tol, rtol=tol)
    assert d.expand((3, 7)).log_prob(x).shape == (3, 7)
    draws = FAMarginal(loc[0, 0], W[0, 0], psi[0, 0]).rsample((20000,))
    cov = W[0, 0] @ W[0, 0].T + torch.diag(psi[0, 0])
    assert torch.allclose(torch.cov(draws.T), cov, atol=0.1 * float(cov.abs().max()))


def test_integer_data_is_cast_and_zero_rows_rejected():
    """Issue 16, case 8: ``Long`` data trains like float data; no rows is a clear error."""
    model = FactorAnalysis(3, 1, dtype=torch.float64)
    x_int = torch.randint(0, 5, (20, 3))
    assert model.check_data(x_int).dtype == torch.float64
    losses = []
    for x in (x_int, x_int.double()):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        losses.append(Trace_ELBO().loss(model, AutoNormal(model), x))
    assert losses[0] == losses[1]
    trace = pyro.poutine.trace(model).get_trace(x_int)
    assert trace.nodes["x"]["value"].dtype == torch.float64
    with pytest.raises(ValueError, match="x has zero rows"):
        model(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="x has zero rows"):
        Trace_ELBO().loss(model, AutoNormal(model), torch.zeros(0, 3, dtype=torch.long))
    assert FactorAnalysis.leader_order(x_int, 1).shape == (3,)
