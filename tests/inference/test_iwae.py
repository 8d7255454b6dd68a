"""IWAE with IWAE/STL/DReG gradients: identities, bounds, unbiasedness, variance, errors.

The ground truth is factor analysis with fixed parameters, whose evidence and posterior are
closed form (:mod:`pyro_dgm.models.fa_exact`): with the exact posterior as guide every
log weight equals log p(x_n), so every bound is exact for every K and draw, and the
path-derivative estimators (STL, DReG) give exactly zero guide gradients.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro.distributions import constraints
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.nn import PyroModule, PyroParam

from pyro_dgm.inference import IWAE, BiasedSubsampleWarning, NonFiniteLossError
from pyro_dgm.inference.iwae import importance_resample
from pyro_dgm.models import ExactPosteriorGuide, FactorAnalysis, fa_log_marginal, fa_posterior

TOL = 1e-6


def fixed_fa(p=5, q=2, n=30, seed=0):
    data = FactorAnalysis(p, q, dtype=torch.float64).simulate(n, seed=seed)
    return FactorAnalysis(p, q, loc=data.loc, W=data.W, psi=data.psi), data


def exact_total(data, idx=None):
    x = data.x if idx is None else data.x[idx]
    return float(fa_log_marginal(x, data.loc, data.W, data.psi).sum())


def perturb(module, scale=0.1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def val(tensor) -> float:
    return float(tensor.detach())


def grads(loss, params):
    return torch.autograd.grad(loss, params)


def max_abs(tensors):
    return max(float(t.abs().max()) for t in tensors)


# --- a FA with a learnable mean and a pyro.param guide, for model and guide gradients ------

def learnable_problem(p=4, q=2, n=12, seed=0):
    _, d = fixed_fa(p, q, n, seed)

    def model(x, subsample=None):
        loc = pyro.param("loc", torch.zeros(p, dtype=x.dtype))
        with pyro.plate("data", len(x), subsample=subsample) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(q), 1.0).to_event(1))
            mean = loc + z @ d.W.T
            pyro.sample("x", dist.Normal(mean, d.psi.sqrt()).to_event(1), obs=x[idx])

    def guide(x, subsample=None):
        A = pyro.param("A", 0.1 * torch.ones(q, p, dtype=x.dtype))
        c = pyro.param("c", torch.zeros(q, dtype=x.dtype))
        s = pyro.param("s", 0.7 * torch.ones(q, dtype=x.dtype), constraint=constraints.positive)
        with pyro.plate("data", len(x), subsample=subsample) as idx:
            pyro.sample("z", dist.Normal(x[idx] @ A.T + c, s).to_event(1))

    return model, guide, d


def store_params(*names):
    return [pyro.param(n).unconstrained() for n in names]


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("subsample", [None, [1, 4, 7, 9]])
def test_one_particle_is_trace_elbo_in_value_and_gradient(vectorize, subsample):
    model, guide, d = learnable_problem()
    kwargs = {} if subsample is None else {"subsample": torch.tensor(subsample)}
    guide(d.x)
    model(d.x)
    params = store_params("loc", "A", "c", "s")
    pyro.set_rng_seed(3)
    ref = Trace_ELBO().differentiable_loss(model, guide, d.x, **kwargs)
    ref_grads = grads(ref, params)
    pyro.set_rng_seed(3)
    ours = IWAE(1, vectorize_particles=vectorize).differentiable_loss(model, guide, d.x, **kwargs)
    our_grads = grads(ours, params)
    assert abs(val(ref - ours)) < TOL
    for a, b in zip(ref_grads, our_grads, strict=True):
        assert torch.allclose(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
def test_exact_guide_gives_log_evidence_for_every_k_and_draw(estimator):
    fa, d = fixed_fa()
    guide = ExactPosteriorGuide(fa)
    exact = exact_total(d)
    for K in (1, 2, 5, 64):
        objective = IWAE(K, estimator)
        for _ in range(3):
            assert abs(-objective.loss(fa, guide, d.x) - exact) < TOL
            assert abs(-val(objective.differentiable_loss(fa, guide, d.x)) - exact) < TOL
    sequential = IWAE(3, estimator, vectorize_particles=False)
    assert abs(-sequential.loss(fa, guide, d.x) - exact) < TOL


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_path_estimators_give_zero_guide_gradient_at_exact_posterior(estimator, vectorize):
    fa, d = fixed_fa()
    guide = ExactPosteriorGuide(fa)
    params = list(guide.parameters())
    for K in (1, 4, 64 if vectorize else 16):
        loss = IWAE(K, estimator, vectorize_particles=vectorize).differentiable_loss(
            fa, guide, d.x)
        assert max_abs(grads(loss, params)) < TOL
    # the plain IWAE gradient is not zero there: the test can see a wrong estimator
    loss = IWAE(4, "iwae").differentiable_loss(fa, guide, d.x)
    assert max_abs(grads(loss, params)) > 1e-2


def chain_rule_problem(n=8, seed=0):
    """FA with the two factors as separate sites and an exact guide z2 | z1 (two sites, the
    second one's distribution depends on the first one's value)."""
    _, d = fixed_fa(4, 2, n, seed)
    mean, cov = fa_posterior(d.x, d.loc, d.W, d.psi)

    def model(x):
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(()), 1.0))
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(()), 1.0))
            m = d.loc + z1.unsqueeze(-1) * d.W[:, 0] + z2.unsqueeze(-1) * d.W[:, 1]
            pyro.sample("x", dist.Normal(m, d.psi.sqrt()).to_event(1), obs=x)

    slope = cov[1, 0] / cov[0, 0]

    def guide(x):
        m1 = pyro.param("m1", mean[:, 0].clone())
        s1 = pyro.param("s1", cov[0, 0].sqrt(), constraint=constraints.positive)
        b = pyro.param("b", slope.clone())
        m2 = pyro.param("m2", mean[:, 1].clone())
        s2 = pyro.param("s2", (cov[1, 1] - slope * cov[1, 0]).sqrt(),
                        constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(m1, s1))
            pyro.sample("z2", dist.Normal(m2 + b * (z1 - m1), s2))

    return model, guide, d


@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_path_estimators_with_dependent_guide_sites(estimator):
    model, guide, d = chain_rule_problem()
    exact = exact_total(d)
    loss = IWAE(5, estimator).differentiable_loss(model, guide, d.x)
    assert abs(-val(loss) - exact) < TOL
    params = store_params("m1", "s1", "b", "m2", "s2")
    assert max_abs(grads(loss, params)) < TOL


class AffineFlowGuide(PyroModule):
    """The exact FA posterior written as a flow: N(0, I) pushed through z = m(x) + L e."""

    def __init__(self, mean, cov):
        super().__init__()
        self.mean = torch.nn.Parameter(mean.clone())
        self.scale_tril = PyroParam(torch.linalg.cholesky(cov),
                                    constraint=constraints.lower_cholesky)

    def forward(self, x):
        base = dist.Normal(x.new_zeros(self.mean.shape[-1]), 1.0).to_event(1)
        with pyro.plate("data", len(x)):
            flow = dist.transforms.LowerCholeskyAffine(self.mean, self.scale_tril)
            pyro.sample("z", dist.TransformedDistribution(base, [flow]))


@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_path_estimators_with_invertible_flow_and_autoguide(estimator):
    fa, d = fixed_fa(4, 2, 10)
    mean, cov = fa_posterior(d.x, d.loc, d.W, d.psi)
    exact = exact_total(d)
    flow = AffineFlowGuide(mean, cov)
    loss = IWAE(6, estimator).differentiable_loss(fa, flow, d.x)
    assert abs(-val(loss) - exact) < TOL
    assert max_abs(grads(loss, list(flow.parameters()))) < TOL

    # AutoMultivariateNormal (an auxiliary latent and Delta sites) set to the exact posterior
    guide = AutoMultivariateNormal(fa)
    guide(d.x)
    L = torch.block_diag(*[torch.linalg.cholesky(cov)] * len(d.x))
    guide.loc = torch.nn.Parameter(mean.reshape(-1))
    guide.scale = PyroParam(L.diagonal().clone(), constraints.softplus_positive)
    guide.scale_tril = PyroParam(L / L.diagonal().unsqueeze(-1), constraints.unit_lower_cholesky)
    loss = IWAE(6, estimator, max_plate_nesting=1).differentiable_loss(fa, guide, d.x)
    assert abs(-val(loss) - exact) < TOL
    assert max_abs(grads(loss, list(guide.parameters()))) < TOL


@pytest.mark.slow
def test_bound_ordering_on_factor_analysis():
    fa, d = fixed_fa(5, 2, 40)
    guide = perturb(ExactPosteriorGuide(fa), 0.15)
    exact = exact_total(d)
    reps = 25

    def mean_bound(objective):
        values = torch.tensor([-objective.loss(fa, guide, d.x) for _ in range(reps)])
        return float(values.mean()), float(values.std() / math.sqrt(reps))

    elbo, se0 = mean_bound(Trace_ELBO())
    iwae5, se5 = mean_bound(IWAE(5))
    iwae50, se50 = mean_bound(IWAE(50))
    assert elbo + 4 * math.hypot(se0, se5) < iwae5
    assert iwae5 + 4 * math.hypot(se5, se50) < iwae50
    assert iwae50 < exact


@pytest.mark.slow
def test_minibatch_estimate_is_unbiased_for_full_batch_bound():
    model, guide, d = learnable_problem(n=12)
    N, B, K, reps = 12, 3, 5, 1200
    iwae = IWAE(K)
    full = torch.tensor([-iwae.loss(model, guide, d.x) for _ in range(reps // 3)])
    gen = torch.Generator().manual_seed(0)
    mini = torch.tensor([-iwae.loss(model, guide, d.x,
                                    subsample=torch.randperm(N, generator=gen)[:B])
                         for _ in range(reps)])
    se = math.hypot(float(full.std()) / math.sqrt(len(full)),
                    float(mini.std()) / math.sqrt(len(mini)))
    assert abs(float(full.mean() - mini.mean())) < 4 * se
    # Pyro's RenyiELBO scales inside the log-sum-exp: this test would catch that bias
    renyi = RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    biased = torch.tensor([-renyi.loss(model, guide, d.x,
                                       subsample=torch.randperm(N, generator=gen)[:B])
                           for _ in range(reps // 3)])
    assert float(biased.mean()) - float(full.mean()) > 10 * se


def gaussian_toy(D=5, N=4, perturbation=0.1, seed=0):
    """Rainforth et al. (2018): p(z) = N(mu, I), p(x | z) = N(z, I); the optimal amortized
    guide N(x/2 + mu/2, I/2), here perturbed."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    mu = torch.randn(D, generator=gen, dtype=f64)
    x = mu + math.sqrt(2) * torch.randn(N, D, generator=gen, dtype=f64)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    noise = [perturbation * torch.randn(shape, generator=gen, dtype=f64)
             for shape in ((D, D), (D,), (D,))]

    def guide(x):
        A = pyro.param("A", torch.eye(D, dtype=f64) / 2 + noise[0])
        b = pyro.param("b", mu / 2 + noise[1])
        s = pyro.param("s", math.sqrt(0.5) * noise[2].exp(), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x @ A.T + b, s).to_event(1))

    guide(x)
    return model, guide, x


@pytest.mark.slow
def test_dreg_gradient_is_unbiased_with_lower_variance_at_k64():
    model, guide, x = gaussian_toy()
    params = store_params("A", "b", "s")
    reps, K = 150, 64

    def samples(estimator):
        objective = IWAE(K, estimator)
        return torch.stack([
            torch.cat([g.reshape(-1) for g in
                       grads(objective.differentiable_loss(model, guide, x), params)])
            for _ in range(reps)])

    iwae, dreg = samples("iwae"), samples("dreg")
    se = (iwae.var(0) / reps + dreg.var(0) / reps).sqrt()
    z = (iwae.mean(0) - dreg.mean(0)).abs() / se
    assert float(z.max()) < 4.5  # the same expected gradient, parameter by parameter
    assert float(dreg.var(0).sum()) < 0.25 * float(iwae.var(0).sum())
    snr_iwae = (iwae.mean(0).abs() / iwae.std(0)).mean()
    snr_dreg = (dreg.mean(0).abs() / dreg.std(0)).mean()
    assert snr_dreg > 2 * snr_iwae


@pytest.mark.slow
def test_score_function_gradient_of_discrete_guide_is_unbiased():
    """VIMCO-style gradients for a Bernoulli latent against the exact gradient of E[IWAE_K]
    (enumerating all 2**K particle configurations)."""
    x = torch.tensor([0.3, 1.5, -0.7], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(x.new_tensor(0.4)))
            pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=x)

    def guide(x):
        logit = pyro.param("logit", x.new_tensor([0.2, -0.5, 1.0]))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=logit))

    guide(x)
    (logit,) = store_params("logit")
    K = 3

    def expected_bound(logit):
        total = 0.0
        for conf in itertools.product([0.0, 1.0], repeat=K):
            z = x.new_tensor(conf).unsqueeze(-1)
            log_q = dist.Bernoulli(logits=logit).log_prob(z)
            log_w = dist.Bernoulli(x.new_tensor(0.4)).log_prob(z) \
                + dist.Normal(2 * z - 1, 1.0).log_prob(x) - log_q
            total = total + (log_q.sum(0).exp() * (torch.logsumexp(log_w, 0) - math.log(K)))
        return total.sum()

    exact = grads(expected_bound(logit), [logit])[0]
    objective = IWAE(K)
    samples = torch.stack([-grads(objective.differentiable_loss(model, guide, x), [logit])[0]
                           for _ in range(600)])
    se = samples.std(0) / math.sqrt(len(samples))
    assert float(((samples.mean(0) - exact).abs() / se).max()) < 4.5
    with pytest.raises(ValueError, match="rsample"):
        IWAE(K, "dreg").loss(model, guide, x)


def test_global_latent_under_subsampling_warns():
    def model(x, subsample=None):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("data", len(x), subsample=subsample) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])

    def guide(x, subsample=None):
        pyro.sample("mu", dist.Normal(pyro.param("m", x.new_zeros(())), 0.5))

    x = torch.randn(10, dtype=torch.float64)
    IWAE(4).loss(model, guide, x)  # full batch: the whole-data bound, fine
    IWAE(1).loss(model, guide, x, subsample=torch.arange(3))  # K = 1: the ELBO, unbiased
    with pytest.warns(BiasedSubsampleWarning, match="data"):
        IWAE(4).loss(model, guide, x, subsample=torch.arange(3))


def test_elbo_module_trains_as_torch_module():
    fa, d = fixed_fa(4, 2, 20)
    guide = perturb(ExactPosteriorGuide(fa), 0.3)
    module = IWAE(8, "dreg")(fa, guide)
    assert isinstance(module, torch.nn.Module)
    optim = torch.optim.Adam(module.parameters(), lr=0.02)
    exact = exact_total(d)
    first = val(module(d.x))
    for _ in range(60):
        optim.zero_grad()
        loss = module(d.x)
        loss.backward()
        optim.step()
    assert val(module(d.x)) < first
    assert val(module(d.x)) > -exact - 1e-6  # a bound: never below -log p(x)


def test_trains_with_svi_and_autoguide():
    fa, d = fixed_fa(4, 2, 20)
    guide = AutoNormal(fa)
    svi = pyro.infer.SVI(fa, guide, pyro.optim.Adam({"lr": 0.05}), IWAE(8, "dreg"))
    losses = [svi.step(d.x) for _ in range(80)]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert all(math.isfinite(v) for v in losses)


def test_importance_resampled_draws_correct_a_shifted_guide():
    fa, d = fixed_fa(4, 2, 3)
    mean, cov = fa_posterior(d.x, d.loc, d.W, d.psi)
    guide = ExactPosteriorGuide(fa)
    with torch.no_grad():
        guide.bias.add_(0.3)  # every guide mean 0.3 off (about 0.75 sd in the first factor)
    draws = importance_resample(fa, guide, d.x, num_samples=3000, num_particles=32)
    assert set(draws) == {"z"} and draws["z"].shape == (3000, 3, 2)
    sir_error = (draws["z"].mean(0) - mean).abs().max()
    assert float(sir_error) < 0.1  # a third of the guide's error, or less
    sd = cov.diagonal().sqrt()
    assert torch.allclose(draws["z"].std(0), sd.expand(3, 2), rtol=0.1)


def test_bad_inputs():
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError, match="num_particles"):
            IWAE(bad)
    with pytest.raises(ValueError, match="estimator"):
        IWAE(4, "vimco")

    fa, d = fixed_fa(4, 2, 5)

    def gamma_guide(x):
        rate = pyro.param("rate", torch.ones(len(x), 2, dtype=x.dtype),
                          constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Gamma(rate, 1.0).to_event(1))

    class NoRsampleNormal(dist.Normal):
        has_rsample = False

    def no_rsample_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", NoRsampleNormal(x.new_zeros(len(x), 2), 1.0).to_event(1))

    for estimator in ("stl", "dreg"):
        with pytest.raises(ValueError, match="site 'z'.*no rsample"):
            IWAE(4, estimator).loss(fa, no_rsample_guide, d.x)
    assert math.isfinite(IWAE(4).loss(fa, gamma_guide, d.x))

    # a guide that puts mass where the model has none: the error names the site
    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Uniform(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(x.new_zeros(x.shape[-1]), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x.new_full((), 5.0), 0.1))

    with pyro.validation_enabled(False):
        for call in (IWAE(4).loss, IWAE(4).loss_and_grads):
            with pytest.raises(NonFiniteLossError, match="'z' \\(model\\)"):
                call(model, guide, d.x)
    with pytest.raises(ValueError):  # with validation, the support check stops it first
        IWAE(4).differentiable_loss(model, guide, d.x)


def test_flow_that_cannot_score_is_rejected_by_path_estimators():
    fa, d = fixed_fa(4, 2, 5)
    planar = dist.transforms.Planar(2).double()

    class PlanarGuide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.flow = planar

        def forward(self, x):
            base = dist.Normal(x.new_zeros(2), 1.0).to_event(1)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.TransformedDistribution(base, [self.flow]))

    guide = PlanarGuide()
    assert math.isfinite(IWAE(4).loss(fa, guide, d.x))
    with pytest.raises(ValueError, match="score any value"):
        IWAE(4, "dreg").differentiable_loss(fa, guide, d.x)


# --- property tests: the exact-guide identities on random FA problems ------------------------

@st.composite
def fa_cases(draw):
    p = draw(st.integers(1, 6))
    q = draw(st.integers(1, p))
    n = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    K = draw(st.sampled_from([1, 2, 7, 32]))
    return p, q, n, seed, K


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=fa_cases())
def test_property_exact_guide_identities(case):
    p, q, n, seed, K = case
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(p, generator=gen, dtype=torch.float64)
    W = torch.randn(p, q, generator=gen, dtype=torch.float64)
    psi = 0.2 + torch.rand(p, generator=gen, dtype=torch.float64) * 2
    fa = FactorAnalysis(p, q, loc=loc, W=W, psi=psi)
    x = fa.simulate(n, seed=seed).x
    exact = float(fa_log_marginal(x, loc, W, psi).sum())
    pyro.clear_param_store()
    guide = ExactPosteriorGuide(fa)
    params = list(guide.parameters())
    assert abs(-IWAE(K).loss(fa, guide, x) - exact) < TOL * max(1.0, abs(exact))
    for estimator in ("stl", "dreg"):
        loss = IWAE(K, estimator).differentiable_loss(fa, guide, x)
        assert abs(-val(loss) - exact) < TOL * max(1.0, abs(exact))
        assert max_abs(grads(loss, params)) < TOL


def test_compare_methods_are_registered_and_run():
    from pyro_dgm.compare.registry import METHODS, Problem, Settings

    fa, d = fixed_fa(4, 2, 15)
    problem = Problem("fa-fixed", fa, (d.x,))
    quick = Settings(num_samples=40, num_chains=1, num_steps=30, progress=False)
    for name in ("iwae", "iwae-sir", "perturbative"):
        entry = METHODS.get(name)
        assert entry.kind == "vi"
        idata = entry.run(problem, quick)
        z = idata.posterior["z"]
        assert tuple(z.shape) == (1, 40, 15, 2)
        assert bool(torch.isfinite(torch.as_tensor(z.values)).all())
