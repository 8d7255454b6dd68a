"""pyro_dgm.inference.MCMC with chain_method="vectorized": exact posteriors with many chains,
one model evaluation per step, no host sync per step, fallbacks, ArviZ export, SBC."""

import contextlib
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
    NN_MU0,
    NN_SIGMA,
    NN_TAU0,
    NN_Y,
    beta_bernoulli,
    beta_bernoulli_exact,
    check_exact,
    gaussian_2d,
    gaussian_2d_sites,
    normal_normal,
    normal_normal_exact,
    normal_normal_posterior,
    single_thread,
)
from pyro.infer import NUTS
from scipy import stats

from pyro_dgm.compare import from_mcmc
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.inference import MCMC, Gibbs, RandomWalkMH

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

CHAINS = 32


def _run(kernel, *args, chains=CHAINS, num_samples=500, warmup=500, **kw):
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, num_chains=chains,
                chain_method="vectorized", disable_progbar=True, **kw)
    mcmc.run(*args)
    return mcmc


@pytest.mark.parametrize("model,args,exact", [
    (beta_bernoulli, (BB_Y,), beta_bernoulli_exact()),
    (normal_normal, (NN_Y,), normal_normal_exact()),
    (gaussian_2d, (), {("x", (i,)): (float(G_MEAN[i]), float(G_COV[i, i])) for i in range(2)}),
], ids=["beta-bernoulli", "normal-normal", "gaussian-2d"])
def test_exact_posteriors_random_walk(model, args, exact):
    mcmc = _run(RandomWalkMH(model), *args)
    samples = mcmc.get_samples(group_by_chain=True)
    assert next(iter(samples.values())).shape[:2] == (CHAINS, 500)
    check_exact(samples, exact)
    rates = list(mcmc.diagnostics()["acceptance rate"].values())
    assert len(rates) == CHAINS and 0.15 < np.mean(rates) < 0.4


def test_per_chain_data():
    """Data with a leading chain dimension: each chain samples its own posterior."""
    y = NN_Y + torch.linspace(-3, 3, CHAINS, dtype=torch.float64).unsqueeze(-1)
    mcmc = _run(RandomWalkMH(normal_normal), y, num_samples=1500)
    mu = mcmc.get_samples(group_by_chain=True)["mu"]
    means, var = normal_normal_posterior(y)
    for c in (0, CHAINS // 2, CHAINS - 1):
        check_exact({"mu": mu[c:c + 1]}, {"mu": (float(means[c]), var)})


def test_initial_params_per_chain():
    start = torch.arange(4, dtype=torch.float64) * 10.0
    mcmc = MCMC(RandomWalkMH(normal_normal, step_size=0.01), num_samples=3, warmup_steps=0,
                num_chains=4, initial_params={"mu": start}, chain_method="vectorized",
                disable_progbar=True)
    mcmc.run(NN_Y)
    first = mcmc.get_samples(group_by_chain=True)["mu"][:, 0]
    assert torch.allclose(first, start, atol=0.1)


def _counting(model):
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return model(*args, **kwargs)

    return counted, calls


@pytest.mark.parametrize("kernel_cls,per_step", [(RandomWalkMH, 1), (Gibbs, 2)])
def test_one_model_evaluation_per_step(kernel_cls, per_step):
    """The model runs once per step for all 64 chains (Gibbs: once per site per sweep)."""
    model, calls = _counting(gaussian_2d_sites)
    seen = []
    _run(kernel_cls(model), chains=64, num_samples=20, warmup=20,
         hook_fn=lambda *a: seen.append(calls[0]))
    assert np.all(np.diff(seen) == per_step)


@contextlib.contextmanager
def _no_host_sync():
    """Make every tensor -> Python conversion raise (a CPU stand-in for CUDA's sync check)."""
    names = ["item", "tolist", "__bool__", "__float__", "__int__"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def forbid(*args, **kwargs):
        raise AssertionError("host synchronization in the sampling loop")

    try:
        for n in names:
            setattr(torch.Tensor, n, forbid)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("kernel_cls", [RandomWalkMH, Gibbs])
def test_no_host_sync_per_step(kernel_cls):
    kernel = kernel_cls(gaussian_2d_sites)
    with pyro.validation_enabled(False):
        kernel.setup_chains(16, 150)
        params = kernel.initial_params
        with _no_host_sync():
            for _ in range(200):  # through warm-up (covariance windows) and sampling
                params = kernel.sample(params)
    assert kernel.chain_diagnostics()[0]["divergences"] == []


@pytest.mark.cuda
@pytest.mark.parametrize("kernel_cls", [RandomWalkMH, Gibbs])
def test_no_device_sync_on_cuda(kernel_cls, device):
    y = NN_Y.to(device)
    kernel = kernel_cls(normal_normal)
    with pyro.validation_enabled(False):
        kernel.setup_chains(64, 150, (y,))
        params = kernel.initial_params
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(200):
                params = kernel.sample(params)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert params["mu"].device.type == "cuda"


def test_nuts_falls_back_with_warning():
    with pytest.warns(UserWarning, match="NUTS cannot advance chains as a batch"):
        mcmc = MCMC(NUTS(normal_normal), num_samples=20, warmup_steps=20, num_chains=1,
                    chain_method="vectorized", disable_progbar=True)
    mcmc.run(NN_Y)
    assert mcmc.get_samples(group_by_chain=True)["mu"].shape == (1, 20)


def test_model_that_does_not_vectorize_falls_back():
    def model(x, y):  # x @ beta does not broadcast over a leading chain dimension
        beta = pyro.sample("beta", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(x @ beta, 1.0), obs=y)

    x = torch.randn(10, 2, dtype=torch.float64)
    y = x.sum(-1)
    mcmc = MCMC(RandomWalkMH(model), num_samples=20, warmup_steps=20, num_chains=1,
                chain_method="vectorized", disable_progbar=True)
    with pytest.warns(UserWarning, match="falling back"):
        mcmc.run(x, y)
    assert mcmc.get_samples(group_by_chain=True)["beta"].shape == (1, 20, 2)


def test_from_mcmc_exports_chains():
    mcmc = _run(RandomWalkMH(normal_normal), NN_Y, chains=8, num_samples=200, warmup=200)
    idata = from_mcmc(mcmc)
    assert idata.posterior["mu"].shape == (8, 200)
    assert idata.log_likelihood["y"].shape == (8, 200, len(NN_Y))
    assert idata.sample_stats["acceptance_rate"].shape == (8, 200)
    assert not idata.sample_stats["diverging"].values.any()
    summary = arviz.summary(idata)
    assert {"r_hat", "ess_bulk", "ess_tail"} <= set(summary.columns)
    assert summary.loc["mu", "r_hat"] < 1.05 and summary.loc["mu", "ess_bulk"] > 100
    # Pyro's summary and diagnostics work on the vectorized run
    diag = mcmc.diagnostics()
    assert set(diag["divergences"]) == {f"chain {c}" for c in range(8)}
    assert mcmc.get_samples()["mu"].shape == (1600,)
    mcmc.summary()


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_chains"):
        MCMC(RandomWalkMH(normal_normal), num_samples=10, num_chains=0)
    with pytest.raises(ValueError, match="chain_method"):
        MCMC(RandomWalkMH(normal_normal), num_samples=10, chain_method="threads")
    with pytest.raises(ValueError, match="initial_params"):
        MCMC(RandomWalkMH(normal_normal), num_samples=10, num_chains=3,
             initial_params={"mu": torch.zeros(2)}, chain_method="vectorized")
    mcmc = MCMC(RandomWalkMH(normal_normal), num_samples=2, num_chains=2,
                initial_params={"mu": torch.tensor([0.0, math.nan])},
                chain_method="vectorized", disable_progbar=True)
    with pytest.raises(ValueError, match="non-finite log density.*'mu'"):
        mcmc.run(NN_Y)


# -- simulation-based calibration (Talts et al. 2018) -------------------------------------------
SBC_REPS, SBC_DRAWS, SBC_THIN, SBC_BINS = 256, 99, 20, 10


def sbc_ranks(kernel_factory, seed=0):
    """Ranks of the true mu among L = 99 thinned posterior draws, for 256 replications run as
    the chains of one vectorized run (each chain has its own simulated data set)."""
    pyro.set_rng_seed(seed)
    n = 5
    mu = NN_MU0 + NN_TAU0 * torch.randn(SBC_REPS, dtype=torch.float64)
    y = mu.unsqueeze(-1) + NN_SIGMA * torch.randn(SBC_REPS, n, dtype=torch.float64)
    mcmc = MCMC(kernel_factory(), num_samples=SBC_DRAWS * SBC_THIN, warmup_steps=300,
                num_chains=SBC_REPS, chain_method="vectorized", disable_progbar=True)
    mcmc.run(y)
    draws = mcmc.get_samples(group_by_chain=True)["mu"][:, SBC_THIN - 1::SBC_THIN]
    assert draws.shape == (SBC_REPS, SBC_DRAWS)
    return (draws < mu.unsqueeze(-1)).sum(-1).numpy()  # in {0, ..., 99}


def sbc_chi2_pvalue(ranks):
    counts = np.bincount(ranks * SBC_BINS // (SBC_DRAWS + 1), minlength=SBC_BINS)
    return stats.chisquare(counts).pvalue


@pytest.mark.slow
@pytest.mark.parametrize("kernel_factory", [lambda: RandomWalkMH(normal_normal),
                                            lambda: Gibbs(normal_normal)],
                         ids=["random-walk-mh", "gibbs"])
def test_simulation_based_calibration(kernel_factory):
    ranks = sbc_ranks(kernel_factory)
    assert sbc_chi2_pvalue(ranks) > 0.001


def test_sbc_detects_a_wrong_posterior():
    """The SBC check has power: a sampler of a too-narrow posterior fails it."""

    def narrow(values, y):
        mean, var = normal_normal_posterior(y)
        return mean + 0.5 * math.sqrt(var) * torch.randn_like(mean)

    ranks = sbc_ranks(lambda: Gibbs(normal_normal, updates={"mu": narrow}))
    assert sbc_chi2_pvalue(ranks) < 1e-6
