"""ChEESHMC: exact moments (conjugates, a 100-dimensional ill-conditioned Gaussian) with
diagonal and dense mass, one chain under pyro.infer.MCMC, initial_params, exported
statistics, no host sync per step, argument checks, SBC on a small hierarchical model."""

import contextlib

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from mcmc_checks import (
    BB_Y,
    NN_Y,
    beta_bernoulli,
    beta_bernoulli_exact,
    check_exact,
    normal_normal,
    normal_normal_exact,
    single_thread,
)
from scipy import stats

from pyro_dgm.compare import from_mcmc
from pyro_dgm.inference import MCMC, ChEESHMC

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
F64 = torch.float64


def _run(kernel, *args, chains=32, num_samples=250, warmup=250, **kw):
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, num_chains=chains,
                chain_method="vectorized", disable_progbar=True, **kw)
    mcmc.run(*args)
    return mcmc


@pytest.mark.parametrize("mass", ["diag", "dense"])
@pytest.mark.parametrize("model,args,exact", [
    (beta_bernoulli, (BB_Y,), beta_bernoulli_exact()),
    (normal_normal, (NN_Y,), normal_normal_exact()),
], ids=["beta-bernoulli", "normal-normal"])
def test_exact_conjugate_posteriors(model, args, exact, mass):
    pyro.set_rng_seed(0)
    mcmc = _run(ChEESHMC(model, mass_matrix=mass), *args)
    check_exact(mcmc.get_samples(group_by_chain=True), exact)


def _gaussian(dim=100, condition=1000.0, seed=0):
    """A dense covariance with eigenvalues log-spaced over ``condition``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    eig = torch.logspace(0, np.log10(condition), dim, dtype=F64) / condition ** 0.5
    cov = q @ torch.diag(eig) @ q.T
    return torch.randn(dim, generator=g, dtype=F64), cov


GAUSS_MEAN, GAUSS_COV = _gaussian()
GAUSS_TRIL = torch.linalg.cholesky(GAUSS_COV)


def gaussian_100():
    pyro.sample("x", dist.MultivariateNormal(GAUSS_MEAN, scale_tril=GAUSS_TRIL))


def _check_gaussian(mcmc, indices):
    samples = mcmc.get_samples(group_by_chain=True)
    check_exact(samples, {("x", (i,)): (float(GAUSS_MEAN[i]), float(GAUSS_COV[i, i]))
                          for i in indices})


def test_ill_conditioned_gaussian_dense_mass():
    pyro.set_rng_seed(0)
    mcmc = _run(ChEESHMC(gaussian_100, mass_matrix="dense"), chains=64, num_samples=150,
                warmup=300)
    # the extreme eigen-directions and a spread of coordinates
    _check_gaussian(mcmc, range(0, 100, 9))
    x = mcmc.get_samples()["x"]
    evecs = torch.linalg.eigh(GAUSS_COV)[1]
    for j in (0, 99):  # smallest and largest variance direction
        proj = ((x - GAUSS_MEAN) @ evecs[:, j]).reshape(64, -1)
        var = float(evecs[:, j] @ GAUSS_COV @ evecs[:, j])
        check_exact({"p": proj}, {"p": (0.0, var)})


def test_ill_conditioned_gaussian_from_a_given_metric_with_a_short_warmup():
    # the exact covariance as the starting metric: the posterior is a standard normal in
    # its units from the first step, so 100 warm-up steps suffice
    pyro.set_rng_seed(0)
    kernel = ChEESHMC(gaussian_100, inverse_mass_matrix=GAUSS_COV, trajectory_length=2.25)
    mcmc = _run(kernel, chains=64, num_samples=100, warmup=100)
    _check_gaussian(mcmc, range(0, 100, 9))
    with pytest.raises(ValueError, match="inverse_mass_matrix: expected shape"):
        _run(ChEESHMC(gaussian_100, inverse_mass_matrix=torch.ones(3, dtype=F64)),
             num_samples=2, warmup=2)


@pytest.mark.slow
def test_ill_conditioned_gaussian_diag_mass():
    pyro.set_rng_seed(0)
    mcmc = _run(ChEESHMC(gaussian_100, mass_matrix="diag"), chains=64, num_samples=150,
                warmup=400)
    _check_gaussian(mcmc, range(0, 100, 9))


def test_one_chain_under_pyro_mcmc():
    pyro.set_rng_seed(1)
    mcmc = pyro.infer.MCMC(ChEESHMC(normal_normal), num_samples=1500, warmup_steps=500,
                           disable_progbar=True)
    mcmc.run(NN_Y)
    check_exact(mcmc.get_samples(group_by_chain=True), normal_normal_exact())
    idata = from_mcmc(mcmc)
    for name in ("accept_prob", "step_size", "num_steps", "energy", "diverging"):
        assert idata.sample_stats[name].shape == (1, 1500), name


def test_exported_statistics_and_initial_params():
    init = {"mu": torch.linspace(-1.0, 1.0, 4, dtype=F64)}
    kernel = ChEESHMC(normal_normal)
    mcmc = _run(kernel, NN_Y, chains=4, num_samples=50, warmup=50, initial_params=init)
    idata = from_mcmc(mcmc)
    stats_ = idata.sample_stats
    for name in ("accept_prob", "step_size", "num_steps", "energy", "diverging",
                 "acceptance_rate"):
        assert stats_[name].shape == (4, 50), name
    assert ((stats_["accept_prob"] >= 0) & (stats_["accept_prob"] <= 1)).all()
    assert (stats_["num_steps"] >= 1).all()
    assert np.allclose(stats_["step_size"].values, kernel.step_size)
    assert torch.equal(kernel.initial_params["mu"], init["mu"])


@contextlib.contextmanager
def _no_host_sync(allowed=()):
    """Every tensor -> Python conversion raises, except on the tensors in ``allowed``."""
    names = ["item", "tolist", "__bool__", "__float__", "__int__"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def guard(name):
        def call(self, *args, **kwargs):
            if any(self is a for a in allowed):
                return saved[name](self, *args, **kwargs)
            raise AssertionError("host synchronization in the sampling loop")
        return call

    try:
        for n in names:
            setattr(torch.Tensor, n, guard(n))
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def test_no_host_sync_per_step():
    """Warm-up reads only the lagged host copy of T/h, its end reads T/h once, sampling
    reads nothing."""
    kernel = ChEESHMC(normal_normal)
    with pyro.validation_enabled(False):
        kernel.setup_chains(16, 150, (NN_Y,))
        params = kernel.initial_params
        with _no_host_sync(allowed=kernel._lagged.slots):
            for _ in range(149):  # warm-up, through the mass-matrix windows
                params = kernel.sample(params)
        params = kernel.sample(params)  # the last warm-up step fixes the kernel
        with _no_host_sync():
            for _ in range(30):
                params = kernel.sample(params)


@pytest.mark.cuda
def test_no_device_sync_on_cuda(device):
    y = NN_Y.to(device)
    kernel = ChEESHMC(normal_normal)
    with pyro.validation_enabled(False):
        kernel.setup_chains(64, 100, (y,))
        params = kernel.initial_params
        for _ in range(100):
            params = kernel.sample(params)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(30):
                params = kernel.sample(params)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert params["mu"].device.type == "cuda"


def test_bad_arguments():
    with pytest.raises(ValueError, match="model and potential_fn"):
        ChEESHMC()
    with pytest.raises(ValueError, match="mass_matrix"):
        ChEESHMC(normal_normal, mass_matrix="full")
    with pytest.raises(ValueError, match="target_accept"):
        ChEESHMC(normal_normal, target_accept=1.5)
    with pytest.raises(ValueError, match="step_size"):
        ChEESHMC(normal_normal, step_size=-1.0)
    with pytest.raises(ValueError, match="max_num_steps"):
        ChEESHMC(normal_normal, max_num_steps=0)
    with pytest.raises(ValueError, match="initial_params"):
        _run(ChEESHMC(potential_fn=lambda p: (p["x"] ** 2).sum(-1)), chains=2)


# -- SBC on a small hierarchical model (Talts et al. 2018) ---------------------------------
SBC_REPS, SBC_DRAWS, SBC_THIN, SBC_BINS, GROUPS, PER_GROUP = 256, 99, 5, 10, 3, 4


def hierarchical(y):
    """mu ~ N(0, 1), theta_j ~ N(mu, 1), y_jn ~ N(theta_j, 1); y of shape (..., J, n)."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 1.0))
    with pyro.plate("groups", GROUPS, dim=-2):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        with pyro.plate("obs", PER_GROUP, dim=-1):
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


@pytest.mark.slow
def test_simulation_based_calibration_hierarchical():
    pyro.set_rng_seed(0)
    mu = torch.randn(SBC_REPS, dtype=F64)
    theta = mu[:, None, None] + torch.randn(SBC_REPS, GROUPS, 1, dtype=F64)
    y = theta + torch.randn(SBC_REPS, GROUPS, PER_GROUP, dtype=F64)
    mcmc = MCMC(ChEESHMC(hierarchical), num_samples=SBC_DRAWS * SBC_THIN, warmup_steps=200,
                num_chains=SBC_REPS, chain_method="vectorized", disable_progbar=True)
    mcmc.run(y)
    samples = mcmc.get_samples(group_by_chain=True)
    for name, truth in (("mu", mu), ("theta", theta[:, 0, 0])):
        draws = samples[name].reshape(SBC_REPS, SBC_DRAWS * SBC_THIN, -1)[..., 0]
        draws = draws[:, SBC_THIN - 1::SBC_THIN]
        ranks = (draws < truth[:, None]).sum(-1).numpy()
        counts = np.bincount(ranks * SBC_BINS // (SBC_DRAWS + 1), minlength=SBC_BINS)
        assert stats.chisquare(counts).pvalue > 0.01, (name, counts)
