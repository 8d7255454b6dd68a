"""The perturbative bound: reference energy, order-1 identity, exactness, bounds, mass covering."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO

from pyro_dgm.inference import IWAE, PerturbativeELBO
from pyro_dgm.inference.iwae import iwae_bound
from pyro_dgm.inference.perturbative import (
    perturbative_log_bound,
    reference_energy,
    taylor_exp,
)
from pyro_dgm.models import ExactPosteriorGuide, FactorAnalysis, fa_log_marginal, fa_posterior

TOL = 1e-6


def fixed_fa(p=5, q=2, n=30, seed=0):
    data = FactorAnalysis(p, q, dtype=torch.float64).simulate(n, seed=seed)
    return FactorAnalysis(p, q, loc=data.loc, W=data.W, psi=data.psi), data


def val(tensor) -> float:
    return float(tensor.detach())


def perturbed_guide(fa, scale, seed=1):
    guide = ExactPosteriorGuide(fa)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return guide


def test_taylor_exp_and_odd_order_lower_bound():
    a = torch.linspace(-30, 30, 601, dtype=torch.float64)
    for order in (1, 3, 5, 7):
        f = taylor_exp(a, order)
        expected = sum(a**k / math.factorial(k) for k in range(order + 1))
        assert torch.allclose(f, expected, rtol=1e-12, atol=1e-12)
        assert bool((f <= a.exp() * (1 + 1e-12)).all())  # f_K <= exp for odd K
    assert float(taylor_exp(a, 2).min()) > 0  # even order: positive, not a lower bound


@pytest.mark.parametrize("order", [1, 3, 5, 7])
def test_reference_energy_solves_the_moment_condition(order):
    gen = torch.Generator().manual_seed(0)
    log_w = 3 * torch.randn(9, 4, 3, generator=gen, dtype=torch.float64) + 50
    v0 = reference_energy(log_w, order)
    assert v0.shape == (1, 4, 3)
    a = log_w - v0
    moment = (a**order).mean(0) / (a**order).abs().mean(0)
    assert float(moment.abs().max()) < 1e-8
    # with that V0 the mean of f_K is the mean of the positive f_{K-1}: log exists
    assert bool((taylor_exp(a, order).mean(0) > 0).all())
    # V0 maximizes the sample bound: nearby values give less
    best, _ = perturbative_log_bound(log_w, order)
    for shift in (-0.1, 0.1):
        other, _ = perturbative_log_bound(log_w, order, reference=v0 + shift)
        assert bool((other < best + 1e-12).all())
    # equal weights: V0 is that value
    flat = torch.full((5, 2), -7.25, dtype=torch.float64)
    assert torch.allclose(reference_energy(flat, order), flat[:1], atol=1e-12)


def test_order_one_identity():
    """log L_1(V0) = V0 + log(1 + ELBO - V0) <= ELBO, equality at V0 = ELBO; the objective
    with the closed-form V0 is Trace_ELBO in value and gradient."""
    gen = torch.Generator().manual_seed(1)
    log_w = torch.randn(6, 10, generator=gen, dtype=torch.float64) - 3
    elbo = log_w.mean(0)
    for v0 in (-5.0, -4.0, -3.5):
        bound, _ = perturbative_log_bound(log_w, 1, reference=torch.tensor(v0))
        assert torch.allclose(bound, v0 + torch.log1p(elbo - v0), atol=1e-12)
        assert bool((bound <= elbo + 1e-12).all())
    bound, v0 = perturbative_log_bound(log_w, 1)
    assert torch.allclose(v0.squeeze(0), elbo, atol=1e-12)
    assert torch.allclose(bound, elbo, atol=1e-12)

    fa, d = fixed_fa()
    guide = perturbed_guide(fa, 0.2)
    params = list(guide.parameters())
    pyro.set_rng_seed(4)
    ref = Trace_ELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=1) \
        .differentiable_loss(fa, guide, d.x)
    ref_grads = torch.autograd.grad(ref, params)
    pyro.set_rng_seed(4)
    ours = PerturbativeELBO(order=1, num_particles=7, max_plate_nesting=1) \
        .differentiable_loss(fa, guide, d.x)
    our_grads = torch.autograd.grad(ours, params)
    assert abs(val(ref - ours)) < TOL
    for a, b in zip(ref_grads, our_grads, strict=True):
        assert torch.allclose(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("order", [1, 3, 5])
def test_exact_guide_gives_log_evidence(order):
    fa, d = fixed_fa()
    guide = ExactPosteriorGuide(fa)
    exact = float(fa_log_marginal(d.x, d.loc, d.W, d.psi).sum())
    for S in (1, 4, 32):
        objective = PerturbativeELBO(order, S)
        assert abs(-objective.loss(fa, guide, d.x) - exact) < TOL
        loss = objective.differentiable_loss(fa, guide, d.x)
        assert abs(-val(loss) - exact) < TOL


def test_bound_below_iwae_and_evidence():
    """Pointwise: max over V0 of e^V0 mean f_K <= mean w (f_K <= exp), so the estimate is
    below the IWAE estimate of the same particles, hence below p(x) in expectation."""
    fa, d = fixed_fa(5, 2, 30)
    guide = perturbed_guide(fa, 0.15)
    exact = fa_log_marginal(d.x, d.loc, d.W, d.psi)
    from pyro_dgm.inference._particles import draw_particles

    ratios, logs = [], []
    for _ in range(20):
        with torch.no_grad():
            particles = draw_particles(fa, guide, (d.x,), {}, num_particles=16,
                                       max_plate_nesting=1)
        log_w = particles.log_weights
        bound, _ = perturbative_log_bound(log_w, 3)
        assert bool((bound <= iwae_bound(log_w) + 1e-10).all())
        ratios.append((bound - exact).exp())  # L_3 / p(x) per data point
        logs.append(float((bound - exact).sum()))
    assert float(torch.stack(ratios).mean()) < 1.0  # E[L_3] <= p(x)
    assert max(logs) < 0  # and in log space, every draw
    loss = PerturbativeELBO(3, 16).loss(fa, guide, d.x)
    assert -loss < float(exact.sum())
    # tighter than the ELBO, looser than IWAE with the same particles (on average)
    elbo = sum(-Trace_ELBO(num_particles=16, vectorize_particles=True).loss(fa, guide, d.x)
               for _ in range(10)) / 10
    pert = sum(-PerturbativeELBO(3, 16).loss(fa, guide, d.x) for _ in range(10)) / 10
    iwae = sum(-IWAE(16).loss(fa, guide, d.x) for _ in range(10)) / 10
    assert elbo < pert < iwae


def mass_covering_problem():
    """FA whose exact posterior is strongly correlated (correlation about -0.8) and a mean-field
    guide: KL-VI's variances are the reciprocal diagonal of the precision, too small."""
    W = torch.tensor([[1.0, 0.5], [1.0, 0.8], [0.6, 0.4], [1.2, 0.8], [0.9, 0.7], [1.0, 0.5]],
                     dtype=torch.float64)
    psi = torch.full((6,), 0.8, dtype=torch.float64)
    loc = torch.zeros(6, dtype=torch.float64)
    fa = FactorAnalysis(6, 2, loc=loc, W=W, psi=psi)
    x = fa.simulate(16, seed=1).x
    _, cov = fa_posterior(x, loc, W, psi)

    def guide(x):
        m = pyro.param("m", x.new_zeros(len(x), 2))
        s = pyro.param("s", x.new_full((2,), 0.5), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(m, s).to_event(1))

    return fa, x, guide, cov


def fitted_variances(fa, x, guide, objective, steps=600):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    optim = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.05 ** (1 / steps)})
    svi = SVI(fa, guide, optim, objective)
    for _ in range(steps):
        svi.step(x)
    return pyro.param("s").detach() ** 2


@pytest.mark.slow
def test_perturbative_fit_is_more_mass_covering_than_kl():
    fa, x, guide, cov = mass_covering_problem()
    exact = cov.diagonal()
    kl = fitted_variances(fa, x, guide,
                          Trace_ELBO(num_particles=16, vectorize_particles=True,
                                     max_plate_nesting=1))
    pert = fitted_variances(fa, x, guide, PerturbativeELBO(3, 16, max_plate_nesting=1))
    # KL-VI with a mean-field guide: variance 1 / precision_ii
    assert torch.allclose(kl, 1 / torch.linalg.inv(cov).diagonal(), rtol=0.1)
    assert bool((pert > kl).all())
    assert bool(((pert - exact).abs() < (kl - exact).abs()).all())
    assert bool((pert < exact).all())


def test_bad_inputs():
    for order in (0, 2, 4, -1, 1.5):
        with pytest.raises(ValueError, match="order"):
            PerturbativeELBO(order)
    with pytest.raises(ValueError, match="odd"):
        reference_energy(torch.zeros(3), 2)
    with pytest.raises(ValueError, match="num_particles"):
        PerturbativeELBO(3, 0)

    fa, d = fixed_fa(4, 2, 5)

    def gamma_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Gamma(x.new_ones(len(x), 2), 1.0).to_event(1))

    class NoRsampleNormal(dist.Normal):
        has_rsample = False

    def no_rsample_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", NoRsampleNormal(x.new_zeros(len(x), 2), 1.0).to_event(1))

    with pytest.raises(ValueError, match="PerturbativeELBO.*site 'z'.*rsample"):
        PerturbativeELBO(3, 4).loss(fa, no_rsample_guide, d.x)
    assert gamma_guide  # Gamma has rsample: accepted
    assert math.isfinite(PerturbativeELBO(3, 4).loss(fa, gamma_guide, d.x))
