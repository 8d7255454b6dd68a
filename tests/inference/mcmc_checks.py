"""Conjugate models with exact posteriors, and MCSE-based checks of MCMC draws.

Tolerance (reference sheet, section 2): a posterior mean or variance estimated from MCMC draws
must lie within ``k = 4`` Monte Carlo standard errors of the exact value, the standard error
coming from ArviZ's effective sample size: ``sd / sqrt(ESS)`` for the mean, and the same for
the squared deviations for the variance.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_dgm.compare._arviz import arviz

F64 = torch.float64

# Beta-Bernoulli: p ~ Beta(2, 2), 20 flips with 14 heads -> Beta(16, 8)
BB_A, BB_B = 2.0, 2.0
BB_Y = torch.tensor([1.0] * 14 + [0.0] * 6, dtype=F64)

# Normal-Normal: mu ~ N(0.5, 2^2), y_i ~ N(mu, 1.5^2)
NN_MU0, NN_TAU0, NN_SIGMA = 0.5, 2.0, 1.5
NN_Y = torch.tensor([1.9, 0.7, 2.4, 1.1, 3.0, 1.6, 0.2, 2.2, 1.4, 2.7], dtype=F64)

# correlated 2-D Gaussian
G_MEAN = torch.tensor([1.0, -2.0], dtype=F64)
G_SD = torch.tensor([1.0, 2.0], dtype=F64)
G_RHO = 0.9
G_COV = torch.tensor([[1.0, G_RHO * 2.0], [G_RHO * 2.0, 4.0]], dtype=F64)


def beta_bernoulli(y):
    p = pyro.sample("p", dist.Beta(y.new_tensor(BB_A), y.new_tensor(BB_B)))
    with pyro.plate("data", y.shape[-1]):
        pyro.sample("y", dist.Bernoulli(p), obs=y)


def beta_bernoulli_exact(y=BB_Y):
    a, b = BB_A + float(y.sum()), BB_B + y.shape[-1] - float(y.sum())
    return {"p": (a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1)))}


def normal_normal(y):
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(NN_MU0), y.new_tensor(NN_TAU0)))
    with pyro.plate("data", y.shape[-1]):
        pyro.sample("y", dist.Normal(mu, NN_SIGMA), obs=y)


def normal_normal_posterior(y):
    """Posterior mean(s) and variance; ``y`` of shape ``(..., n)``."""
    precision = 1 / NN_TAU0**2 + y.shape[-1] / NN_SIGMA**2
    mean = (NN_MU0 / NN_TAU0**2 + y.sum(-1) / NN_SIGMA**2) / precision
    return mean, 1 / precision


def normal_normal_exact(y=NN_Y):
    mean, var = normal_normal_posterior(y)
    return {"mu": (float(mean), var)}


def normal_normal_update(values, y):
    """Conjugate conditional of ``mu`` (a user update for Gibbs)."""
    mean, var = normal_normal_posterior(y)
    chains = values["mu"].shape[0]
    return mean + math.sqrt(var) * torch.randn(chains, dtype=y.dtype)


def gaussian_2d():
    pyro.sample("x", dist.MultivariateNormal(G_MEAN, G_COV))


def gaussian_2d_sites():
    """The same joint as two sites ``x1`` and ``x2 | x1`` (for Gibbs)."""
    x1 = pyro.sample("x1", dist.Normal(G_MEAN[0], G_SD[0]))
    loc = G_MEAN[1] + G_RHO * G_SD[1] / G_SD[0] * (x1 - G_MEAN[0])
    pyro.sample("x2", dist.Normal(loc, G_SD[1] * math.sqrt(1 - G_RHO**2)))


def _conditional(i, j):
    def update(values):
        other = values[f"x{j + 1}"]
        loc = G_MEAN[i] + G_RHO * G_SD[i] / G_SD[j] * (other - G_MEAN[j])
        return dist.Normal(loc, G_SD[i] * math.sqrt(1 - G_RHO**2))

    return update


#: exact full conditionals of gaussian_2d_sites, returning distributions
GAUSSIAN_2D_UPDATES = {"x1": _conditional(0, 1), "x2": _conditional(1, 0)}

GAUSSIAN_2D_EXACT = {"x1": (1.0, 1.0), "x2": (-2.0, 4.0)}


def assert_moments(draws, mean: float, var: float, *, k: float = 4.0, name: str = ""):
    """Posterior mean and variance of ``draws`` (chains, draws) within ``k`` MCSE."""
    draws = np.asarray(draws, dtype=float)
    if draws.ndim == 1:
        draws = draws[None]
    m = draws.mean()
    ess_mean = float(arviz.ess(draws, method="mean"))
    se_mean = draws.std() / math.sqrt(ess_mean)
    sq = (draws - m) ** 2
    v = sq.mean()
    ess_var = float(arviz.ess(sq, method="mean"))
    se_var = sq.std() / math.sqrt(ess_var)
    assert abs(m - mean) < k * se_mean, (
        f"{name}: mean {m:.4f} vs exact {mean:.4f} (MCSE {se_mean:.4f}, ESS {ess_mean:.0f})")
    assert abs(v - var) < k * se_var, (
        f"{name}: variance {v:.4f} vs exact {var:.4f} (MCSE {se_var:.4f}, ESS {ess_var:.0f})")
    # Stan's coarse benchmark rule on the mean
    assert abs(m - mean) / math.sqrt(var) < 0.25, name
    return ess_mean


def check_exact(samples: dict, exact: dict, **kw):
    """``samples``: site -> (chains, draws, ...) tensor; ``exact``: site or (site, index) ->
    (mean, variance)."""
    for key, (mean, var) in exact.items():
        name, index = key if isinstance(key, tuple) else (key, ())
        draws = samples[name][(slice(None), slice(None)) + tuple(index)]
        assert_moments(draws.cpu().numpy(), mean, var, name=str(key), **kw)


@pytest.fixture(autouse=False)
def single_thread():
    """Tiny models: one intra-op thread (several threads only add start-up and, on a busy
    2-core machine, contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
