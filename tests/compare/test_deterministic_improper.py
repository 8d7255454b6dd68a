"""Issue 20 acceptance: ``pyro.deterministic`` sites in the posterior of MCMC and VI exports,
and improper priors (``ImproperUniform``) in the export and the vectorized kernels."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value

from pyro_dgm.compare import from_guide, from_mcmc
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.inference import MCMC as VectorizedMCMC
from pyro_dgm.inference import ChainModel, Gibbs, RandomWalkMH
from pyro_dgm.inference.model_info import model_info, point_strategy


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- eight schools, non-centred, theta a deterministic site ------------------------------
Y = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12], dtype=torch.float64)
SIGMA = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18], dtype=torch.float64)


def schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("school", y.shape[0]):
        eta = pyro.sample("eta", dist.Normal(y.new_tensor(0.0), 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _check_theta(idata):
    post = idata.posterior
    assert post["theta"].dims == ("chain", "draw", "school")
    assert "theta" not in idata.observed_data and "theta" not in idata.log_likelihood
    assert list(idata.log_likelihood.data_vars) == ["y"]
    # the per-draw value, not one value from a prior trace
    direct = (post["mu"] + post["tau"] * post["eta"]).transpose("chain", "draw", "school")
    np.testing.assert_allclose(post["theta"].values, direct.values, rtol=0, atol=1e-12)
    assert post["theta"].values.std(axis=(0, 1)).min() > 0.1


def test_schools_theta_nuts():
    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(schools), num_samples=100, warmup_steps=100, disable_progbar=True)
    mcmc.run(Y, SIGMA)
    idata = from_mcmc(mcmc)
    _check_theta(idata)
    post = idata.posterior
    mean_direct = (post["mu"] + post["tau"] * post["eta"]).mean(("chain", "draw"))
    np.testing.assert_allclose(post["theta"].mean(("chain", "draw")).values,
                               mean_direct.values, rtol=0, atol=1e-12)


def test_schools_theta_vectorized_random_walk():
    pyro.set_rng_seed(1)
    mcmc = VectorizedMCMC(RandomWalkMH(schools), num_samples=100, warmup_steps=100,
                          num_chains=8, chain_method="vectorized", disable_progbar=True)
    mcmc.run(Y, SIGMA)
    _check_theta(from_mcmc(mcmc))


def test_schools_theta_guide():
    pyro.set_rng_seed(2)
    guide = AutoNormal(schools)
    svi = SVI(schools, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(100):
        svi.step(Y, SIGMA)
    idata = from_guide(schools, guide, Y, SIGMA, num_samples=200)
    _check_theta(idata)
    assert idata.posterior.attrs["inference_kind"] == "vi"


def test_deterministic_skipped_on_request():
    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(schools), num_samples=5, warmup_steps=5, disable_progbar=True)
    mcmc.run(Y, SIGMA)
    idata = from_mcmc(mcmc, deterministic=False)
    assert "theta" not in idata.posterior and "lp" in idata.sample_stats


# -- a flat prior on a scale ---------------------------------------------------------------
N_OBS = 30
OBS = 1.0 + 2.0 * torch.randn(N_OBS, generator=torch.Generator().manual_seed(5),
                              dtype=torch.float64)


def improper(y):
    s = pyro.sample("s", dist.ImproperUniform(constraints.positive, (), ()))
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, s), obs=y)


def wide(y, scale=1e3):
    """The proper-prior version: a half-normal prior on the scale, 500 x the posterior mean."""
    s = pyro.sample("s", dist.HalfNormal(y.new_tensor(scale)))
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, s), obs=y)


def grid_moments(y, prior_scale=1e3):
    """Posterior means and sds of ``mu`` and ``s`` under :func:`wide`, by quadrature."""
    n, sy, syy = y.numel(), float(y.sum()), float((y ** 2).sum())
    ybar, sd = sy / n, float(y.std())
    mu = np.linspace(ybar - 10 * sd / np.sqrt(n), ybar + 10 * sd / np.sqrt(n), 1201)[:, None]
    s = np.linspace(0.2 * sd, 3.0 * sd, 1400)[None, :]
    ss = syy - 2 * mu * sy + n * mu ** 2
    logp = (-0.5 * (mu / 10.0) ** 2 - 0.5 * (s / prior_scale) ** 2
            - n * np.log(s) - 0.5 * ss / s ** 2)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    out = {}
    for name, x in (("mu", mu), ("s", s)):
        m = float((w * x).sum())
        out[name] = (m, float(np.sqrt((w * (x - m) ** 2).sum())))
    return out


REF = grid_moments(OBS)


def _check_matches(idata, z_max=4.0):
    """Every mean within ``z_max`` Monte Carlo standard errors (sd / sqrt(ESS)) of the
    proper-prior posterior, and every sd within ``z_max`` standard errors of the sd
    (relative standard error sqrt((kurtosis - 1) / (4 ESS)), the delta method for the sd of
    a marginal with that kurtosis; at least 15%).
    ESS: ArviZ's bulk ESS (one chain too: MCMC draws are correlated), or the number of
    draws for independent (VI) draws. Returns the z scores."""
    z = {}
    independent = idata.posterior.attrs.get("inference_kind") == "vi"
    for name, (mean, sd) in REF.items():
        draws = idata.posterior[name]
        ess = float(draws.size) if independent else float(
            arviz.ess(idata.posterior[[name]], method="bulk")[name])
        z[name] = (float(draws.mean()) - mean) / (sd / np.sqrt(ess))
        assert abs(z[name]) < z_max, (name, z[name], ess)
        x = draws.values.ravel()
        kurtosis = float(np.mean((x - x.mean()) ** 4) / np.var(x) ** 2)
        sd_tol = max(0.15, z_max * np.sqrt((kurtosis - 1) / (4 * ess)))
        assert abs(float(draws.std()) / sd - 1) < sd_tol, (name, float(draws.std()), sd, ess)
    return z


def test_tolerance_separates_a_prior_that_matters():
    """The reference is sensitive: a half-normal(1) prior moves the scale's posterior mean by
    far more than any Monte Carlo tolerance used here, the half-normal(1000) one by nothing."""
    assert abs(grid_moments(OBS, 1.0)["s"][0] - REF["s"][0]) > 0.3 * REF["s"][1]
    assert abs(grid_moments(OBS, 1e6)["s"][0] - REF["s"][0]) < 1e-4 * REF["s"][1]


def test_model_info_and_chain_model_need_no_prior_draw():
    info = model_info(improper, (OBS,))
    assert info.latent == {"s": torch.Size([]), "mu": torch.Size([])}
    assert info.max_plate_nesting == 1
    cm = ChainModel(improper, (OBS,), {}, 6)
    init = cm.valid_init_values()
    assert init["s"].shape == (6, 1) and bool((init["s"] > 0).all())
    assert init["s"].dtype == torch.float64 and len(set(init["s"].flatten().tolist())) == 6
    assert torch.isfinite(cm.log_joint(init)).all()


def test_improper_nuts_export():
    pyro.set_rng_seed(3)
    kernel = NUTS(improper, max_plate_nesting=1, init_strategy=point_strategy())
    mcmc = MCMC(kernel, num_samples=1000, warmup_steps=200, num_chains=1, disable_progbar=True)
    mcmc.run(OBS)
    idata = from_mcmc(mcmc)
    assert idata.sample_stats["lp"].shape == (1, 1000)
    assert idata.log_likelihood["y"].shape == (1, 1000, N_OBS)
    _check_matches(idata)


@pytest.mark.parametrize("kernel", [RandomWalkMH, Gibbs], ids=["random-walk", "gibbs"])
def test_improper_vectorized(kernel):
    pyro.set_rng_seed(4)
    mcmc = VectorizedMCMC(kernel(improper), num_samples=400, warmup_steps=400, num_chains=16,
                          chain_method="vectorized", disable_progbar=True)
    mcmc.run(OBS)
    assert mcmc.get_samples(group_by_chain=True)["s"].shape[:2] == (16, 400)
    idata = from_mcmc(mcmc)
    assert np.isfinite(idata.sample_stats["lp"].values).all()
    _check_matches(idata)


def _fit_guide(model, seed=6, steps=600):
    pyro.set_rng_seed(seed)
    start = {"s": OBS.new_tensor(1.0), "mu": OBS.new_tensor(0.0)}
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=start))
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.01 ** (1 / steps)})  # 100x decay
    svi = SVI(model, guide, optim, Trace_ELBO())
    for _ in range(steps):
        svi.step(OBS)
    pyro.set_rng_seed(seed + 1)
    return from_guide(model, guide, OBS, num_samples=2000)


def test_improper_guide_matches_wide_prior_guide():
    """The same SVI run on both priors: the guides' draws agree within Monte Carlo error
    (independent draws: ESS = number of draws), and both are close to the posterior."""
    flat, proper = _fit_guide(improper), _fit_guide(wide)
    for name, (_, sd) in REF.items():
        a, b = flat.posterior[name].values.ravel(), proper.posterior[name].values.ravel()
        se = np.sqrt(a.var() / a.size + b.var() / b.size)
        assert abs(a.mean() - b.mean()) < 4 * se, (name, a.mean(), b.mean(), se)
        assert abs(a.mean() - REF[name][0]) < 0.25 * sd
