"""RandomWalkMH under pyro.infer.MCMC: exact posteriors, initial_params, adaptation, errors."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from mcmc_checks import (
    BB_Y,
    G_COV,
    G_MEAN,
    NN_Y,
    beta_bernoulli,
    beta_bernoulli_exact,
    check_exact,
    gaussian_2d,
    normal_normal,
    normal_normal_exact,
    single_thread,
)
from pyro.infer import MCMC

from pyro_dgm.compare import from_mcmc
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.inference import ProposalAdapter, RandomWalkMH, adaptation_windows

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def _run(model, *args, num_samples=2000, warmup=600, **kernel_kw):
    mcmc = MCMC(RandomWalkMH(model, **kernel_kw), num_samples=num_samples,
                warmup_steps=warmup, disable_progbar=True)
    mcmc.run(*args)
    return mcmc


@pytest.mark.parametrize("covariance", ["dense", "diag"])
def test_beta_bernoulli_exact(covariance):
    mcmc = _run(beta_bernoulli, BB_Y, covariance=covariance)
    check_exact(mcmc.get_samples(group_by_chain=True), beta_bernoulli_exact())


def test_normal_normal_exact():
    mcmc = _run(normal_normal, NN_Y)
    check_exact(mcmc.get_samples(group_by_chain=True), normal_normal_exact())
    diag = mcmc.diagnostics()
    assert diag["divergences"] == {"chain 0": []}
    assert 0.15 < diag["acceptance rate"]["chain 0"] < 0.45  # tuned towards 0.234
    assert diag["step size"]["chain 0"] > 0


def test_correlated_gaussian_dense_covariance():
    mcmc = _run(gaussian_2d, num_samples=3000)
    samples = mcmc.get_samples(group_by_chain=True)
    exact = {("x", (i,)): (float(G_MEAN[i]), float(G_COV[i, i])) for i in range(2)}
    check_exact(samples, exact)
    x = samples["x"].reshape(-1, 2)
    assert abs(float(torch.corrcoef(x.T)[0, 1]) - 0.9) < 0.03
    # the adapted proposal found the correlation: acceptance near the target
    assert 0.15 < mcmc.diagnostics()["acceptance rate"]["chain 0"] < 0.4


def test_initial_params_honoured():
    start = torch.tensor(8.0, dtype=torch.float64)
    mcmc = MCMC(RandomWalkMH(normal_normal, step_size=0.01), num_samples=5, warmup_steps=0,
                initial_params={"mu": start}, disable_progbar=True)
    mcmc.run(NN_Y)
    first = mcmc.get_samples()["mu"][0]
    assert abs(float(first) - 8.0) < 0.1  # next to the given point, far from the posterior
    # constrained sites: initial params are unconstrained (logit p)
    mcmc = MCMC(RandomWalkMH(beta_bernoulli, step_size=0.01), num_samples=3, warmup_steps=0,
                initial_params={"p": torch.tensor(-3.0, dtype=torch.float64)},
                disable_progbar=True)
    mcmc.run(BB_Y)
    assert abs(float(mcmc.get_samples()["p"][0]) - 1 / (1 + math.exp(3.0))) < 0.01


def test_potential_fn_kernel():
    def potential(params):
        return 0.5 * ((params["z"] - 3.0) ** 2).sum()

    mcmc = MCMC(RandomWalkMH(potential_fn=potential), num_samples=3000, warmup_steps=500,
                initial_params={"z": torch.zeros(2, dtype=torch.float64)}, disable_progbar=True)
    mcmc.run()
    z = mcmc.get_samples(group_by_chain=True)["z"]
    check_exact({"z": z}, {("z", (0,)): (3.0, 1.0), ("z", (1,)): (3.0, 1.0)})


def test_from_mcmc_and_arviz_summary():
    mcmc = _run(normal_normal, NN_Y, num_samples=500, warmup=300)
    idata = from_mcmc(mcmc)
    assert idata.posterior["mu"].shape == (1, 500)
    assert not idata.sample_stats["diverging"].values.any()
    assert "acceptance_rate" in idata.sample_stats and "step_size" in idata.sample_stats
    summary = arviz.summary(idata)
    assert {"r_hat", "ess_bulk", "ess_tail"} <= set(summary.columns)
    assert np.isfinite(summary.loc["mu", "ess_bulk"])
    # arviz's own converter needs "divergences" in the diagnostics
    if hasattr(arviz, "from_pyro"):
        assert arviz.from_pyro(mcmc).posterior["mu"].shape == (1, 500)


def test_logging_and_mixture_enumeration():
    """One chain under Pyro's MCMC sums discrete sites out, as NUTS does."""

    def mix(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=x.dtype), 5.0).to_event(1))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(torch.ones(2, dtype=x.dtype) / 2))
            pyro.sample("x", dist.Normal(loc[z], 1.0), obs=x)

    x = torch.tensor([-2.1, -1.9, -2.3, 2.0, 2.2, 1.8], dtype=torch.float64)
    kernel = RandomWalkMH(mix, max_plate_nesting=1)
    mcmc = MCMC(kernel, num_samples=50, warmup_steps=50, disable_progbar=True)
    mcmc.run(x)
    assert set(mcmc.get_samples()) == {"loc"}
    assert set(kernel.logging()) == {"step size", "acc. prob"}


def test_adaptation_windows_follow_stan():
    assert adaptation_windows(10) == []
    assert adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450),
                                        (450, 950)]
    windows = adaptation_windows(100)
    assert windows[0][0] == 15 and windows[-1][1] == 90


def test_adapter_learns_covariance():
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    L = torch.linalg.cholesky(cov)
    adapter = ProposalAdapter(2, 200, covariance="dense")
    state = adapter.init(64, dtype=torch.float64)
    for t in range(200):
        u = torch.randn(64, 2, dtype=torch.float64) @ L.T
        state = adapter.adapt(state, t, u, torch.full((64,), 0.234, dtype=torch.float64))
    est = state.factor @ state.factor.T
    assert torch.allclose(est, cov, atol=0.1)
    assert math.isclose(float(state.log_step.exp()), 2.38 / math.sqrt(2), rel_tol=0.05)


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.1])
def test_target_accept_out_of_range(value):
    with pytest.raises(ValueError, match="target_accept"):
        RandomWalkMH(normal_normal, target_accept=value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="model and potential_fn"):
        RandomWalkMH()
    with pytest.raises(ValueError, match="covariance"):
        RandomWalkMH(normal_normal, covariance="full")
    with pytest.raises(ValueError, match="step_size"):
        RandomWalkMH(normal_normal, step_size=-1.0)
    mcmc = MCMC(RandomWalkMH(potential_fn=lambda p: p["z"].sum()), num_samples=2,
                disable_progbar=True)
    with pytest.raises(ValueError, match="initial_params"):
        mcmc.run()


def uniform_scale(y):
    theta = pyro.sample("theta", dist.LogNormal(y.new_tensor(0.0), 1.0))
    with pyro.plate("data", y.shape[-1]):
        pyro.sample("y", dist.Uniform(0.0, theta), obs=y)


def test_nonfinite_initial_point_names_site():
    y = torch.tensor([5.0, 0.5], dtype=torch.float64)
    mcmc = MCMC(RandomWalkMH(uniform_scale), num_samples=2, warmup_steps=0,
                initial_params={"theta": torch.tensor(0.0, dtype=torch.float64)},
                disable_progbar=True)
    with pytest.raises(ValueError, match="non-finite log density.*'y'"):
        mcmc.run(y)


def _adapt(adapter, units, draw, steps, log_density=None):
    state = adapter.init(units, dtype=torch.float64)
    for t in range(steps):
        u = draw()
        ld = None if log_density is None else log_density(u)
        state = adapter.adapt(state, t, u, torch.full((units,), 0.234, dtype=torch.float64), ld)
    return state.factor @ state.factor.T if adapter.dense else torch.diag(state.factor**2)


@pytest.mark.parametrize("covariance", ["dense", "diag"])
def test_regularization_is_relative_to_each_scale(covariance):
    """Scales 0.007 and 0.3 correlated 0.99: the conditional variance of the small coordinate
    (2% of its variance) is estimated within 8% (4.5 Monte Carlo sd, 6,336 pooled degrees of
    freedom); the former absolute jitter 1e-3 * 5 / (n + 5) inflated it by 80%."""
    torch.manual_seed(0)
    sd = torch.tensor([0.007, 0.3], dtype=torch.float64)
    cov = sd[:, None] * torch.tensor([[1.0, 0.99], [0.99, 1.0]], dtype=torch.float64) * sd
    L = torch.linalg.cholesky(cov)
    est = _adapt(ProposalAdapter(2, 300, covariance=covariance), 64,
                 lambda: torch.randn(64, 2, dtype=torch.float64) @ L.T, 300)
    assert torch.allclose(est.diagonal(), cov.diagonal(), rtol=0.08)
    if covariance == "dense":
        conditional = est[0, 0] - est[0, 1] ** 2 / est[1, 1]
        exact = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
        assert abs(float(conditional / exact) - 1) < 0.08


def test_screening_leaves_out_units_in_a_minor_mode():
    """8 of 64 units in a wide mode 6 nats lower: with screening the covariance is the main
    mode's (identity), without it the wide units inflate it about tenfold."""
    minor = torch.arange(64) < 8

    def draw():
        u = torch.randn(64, 2, dtype=torch.float64)
        return torch.where(minor.unsqueeze(-1), 30.0 + 10.0 * u, u)

    def log_density(u):
        return -0.5 * (u**2).sum(-1) * torch.where(minor, 0.0, 1.0) - 6.0 * minor

    torch.manual_seed(0)
    screened = _adapt(ProposalAdapter(2, 500, screen=True), 64, draw, 500, log_density)
    assert torch.allclose(screened, torch.eye(2, dtype=torch.float64), atol=0.1)
    torch.manual_seed(0)
    pooled = _adapt(ProposalAdapter(2, 500), 64, draw, 500)
    assert pooled.diagonal().min() > 5
    with pytest.raises(ValueError, match="log_density"):
        _adapt(ProposalAdapter(2, 500, screen=True), 64, draw, 100)
