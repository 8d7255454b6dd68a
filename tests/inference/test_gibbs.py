"""Gibbs: exact conditionals of discrete sites, MH within Gibbs, user conditionals, errors."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from mcmc_checks import (
    BB_Y,
    GAUSSIAN_2D_EXACT,
    GAUSSIAN_2D_UPDATES,
    NN_Y,
    beta_bernoulli,
    beta_bernoulli_exact,
    check_exact,
    gaussian_2d_sites,
    normal_normal,
    normal_normal_exact,
    normal_normal_update,
    single_thread,
)
from pyro.infer import MCMC as PyroMCMC
from pyro.ops.indexing import Vindex

from pyro_dgm.compare import from_mcmc
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.inference import MCMC, Gibbs

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def _vectorized(kernel, *args, chains=16, num_samples=600, warmup=400):
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, num_chains=chains,
                chain_method="vectorized", disable_progbar=True)
    mcmc.run(*args)
    return mcmc


def test_normal_normal_mh_within_gibbs_one_chain():
    """Under pyro.infer.MCMC unchanged."""
    mcmc = PyroMCMC(Gibbs(normal_normal), num_samples=2000, warmup_steps=600,
                    disable_progbar=True)
    mcmc.run(NN_Y)
    check_exact(mcmc.get_samples(group_by_chain=True), normal_normal_exact())
    diag = mcmc.diagnostics()
    assert diag["divergences"] == {"chain 0": []}
    assert 0.15 < diag["mu acceptance rate"]["chain 0"] < 0.5
    summary = arviz.summary(from_mcmc(mcmc))
    assert {"r_hat", "ess_bulk"} <= set(summary.columns)
    assert summary.loc["mu", "ess_bulk"] > 200


@pytest.mark.parametrize("scan", ["systematic", "random"])
def test_normal_normal_user_conditional(scan):
    mcmc = _vectorized(Gibbs(normal_normal, updates={"mu": normal_normal_update}, scan=scan),
                       NN_Y, warmup=10)
    check_exact(mcmc.get_samples(group_by_chain=True), normal_normal_exact())
    assert "acceptance rate" not in mcmc.diagnostics()  # no MH site


def test_beta_bernoulli_mh_within_gibbs():
    mcmc = _vectorized(Gibbs(beta_bernoulli), BB_Y)
    check_exact(mcmc.get_samples(group_by_chain=True), beta_bernoulli_exact())


def test_beta_bernoulli_user_conditional_returning_distribution():
    def conjugate(values, y):
        return dist.Beta(2.0 + y.sum(), 2.0 + len(y) - y.sum())

    mcmc = _vectorized(Gibbs(beta_bernoulli, updates={"p": conjugate}), BB_Y, warmup=10)
    check_exact(mcmc.get_samples(group_by_chain=True), beta_bernoulli_exact())


@pytest.mark.parametrize("updates", [None, GAUSSIAN_2D_UPDATES], ids=["mh", "conditionals"])
def test_correlated_gaussian(updates):
    mcmc = _vectorized(Gibbs(gaussian_2d_sites, updates=updates), num_samples=1000)
    samples = mcmc.get_samples(group_by_chain=True)
    check_exact(samples, GAUSSIAN_2D_EXACT)
    corr = torch.corrcoef(torch.stack([samples["x1"].reshape(-1), samples["x2"].reshape(-1)]))
    assert abs(float(corr[0, 1]) - 0.9) < 0.03


def test_discrete_site_exact_conditional():
    """A Bernoulli site with a Normal child: p(b = 1 | y) is known exactly."""
    y = torch.tensor(0.8, dtype=torch.float64)

    def model(y):
        b = pyro.sample("b", dist.Bernoulli(y.new_tensor(0.3)))
        pyro.sample("y", dist.Normal(2.0 * b, 1.0), obs=y)

    like = dist.Normal(torch.tensor([0.0, 2.0], dtype=torch.float64), 1.0).log_prob(y).exp()
    post = (0.3 * like[1] / (0.3 * like[1] + 0.7 * like[0])).item()
    mcmc = _vectorized(Gibbs(model), y, chains=32, num_samples=500, warmup=0)
    b = mcmc.get_samples(group_by_chain=True)["b"]
    assert b.dtype == torch.float64  # discrete draws stored as floats
    # exact conditional draws with nothing else to update: independent Bernoulli(post)
    check_exact({"b": b}, {"b": (post, post * (1 - post))})


def test_assignments_drawn_for_whole_plate():
    """All mixture assignments inside a plate are drawn at once, each from its own
    conditional: with known component means the posterior of each z_n is exact."""
    x = torch.tensor([-3.0, -0.2, 0.1, 3.0], dtype=torch.float64)
    locs = torch.tensor([-1.0, 1.0], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(torch.tensor([0.5, 0.5], dtype=x.dtype)))
            pyro.sample("x", dist.Normal(Vindex(locs)[..., z], 1.0), obs=x)

    like = dist.Normal(locs, 1.0).log_prob(x.unsqueeze(-1))
    post = like.softmax(-1)[:, 1]
    mcmc = MCMC(Gibbs(model), num_samples=1000, warmup_steps=0, num_chains=8,
                chain_method="vectorized", disable_progbar=True)
    mcmc.run(x)
    z = mcmc.get_samples(group_by_chain=True)["z"]
    assert z.shape == (8, 1000, 4)
    for n in range(4):
        p = float(post[n])
        check_exact({"z": z[..., n]}, {"z": (p, p * (1 - p))})


def test_other_plate_at_the_same_dim_couples_the_elements():
    """``y`` sits in plate ``b`` at the dim of ``z``'s plate ``a`` but every ``y_j`` depends
    on all of ``z``: the elements of ``z`` are not conditionally independent, and drawing
    them at once from per-element conditionals would be silently wrong."""
    y = torch.tensor([2.0, 2.1, 1.9], dtype=torch.float64)

    def model(y):
        with pyro.plate("a", 3, dim=-1):
            z = pyro.sample("z", dist.Bernoulli(y.new_tensor(0.5)))
        total = z.sum(-1, keepdim=True)  # couples the elements of z
        with pyro.plate("b", 3, dim=-1):
            pyro.sample("y", dist.Normal(total, 1.0), obs=y)

    with pytest.raises(ValueError, match="site 'z': its elements along dim -1 enter a common"):
        _vectorized(Gibbs(model), y, chains=4, num_samples=5, warmup=0)


def test_from_mcmc_and_arviz_summary():
    mcmc = _vectorized(Gibbs(beta_bernoulli), BB_Y, chains=4, num_samples=300, warmup=200)
    idata = from_mcmc(mcmc)
    assert idata.posterior["p"].shape == (4, 300)
    assert "p_acceptance_rate" in idata.sample_stats
    summary = arviz.summary(idata)
    assert {"r_hat", "ess_bulk"} <= set(summary.columns)
    assert summary.loc["p", "r_hat"] < 1.05


# -- bad input --------------------------------------------------------------------------------
def test_continuous_site_without_update_names_site():
    mcmc = MCMC(Gibbs(normal_normal, random_walk=False), num_samples=2, disable_progbar=True)
    with pytest.raises(ValueError, match="'mu'"):
        mcmc.run(NN_Y)


def test_infinite_discrete_support_names_site():
    def model(y):
        n = pyro.sample("n", dist.Poisson(y.new_tensor(3.0)))
        pyro.sample("y", dist.Normal(n, 1.0), obs=y)

    mcmc = PyroMCMC(Gibbs(model), num_samples=2, disable_progbar=True)
    with pytest.raises(ValueError, match="'n'.*infinite support"):
        mcmc.run(torch.tensor(2.0, dtype=torch.float64))


def test_infinite_support_with_user_update_is_fine():
    def model(y):
        n = pyro.sample("n", dist.Poisson(y.new_tensor(3.0)))
        pyro.sample("y", dist.Normal(n, 1.0), obs=y)

    def prior_draw(values, y):  # any valid kernel: here the (wrong-posterior) prior
        return dist.Poisson(y.new_tensor(3.0)).sample((values["n"].shape[0],))

    mcmc = _vectorized(Gibbs(model, updates={"n": prior_draw}), torch.tensor(2.0), chains=2,
                       num_samples=5, warmup=0)
    assert mcmc.get_samples()["n"].dtype.is_floating_point


def test_bad_arguments():
    with pytest.raises(ValueError, match="target_accept"):
        Gibbs(normal_normal, target_accept=1.0)
    with pytest.raises(ValueError, match="scan"):
        Gibbs(normal_normal, scan="blocked")
    with pytest.raises(ValueError, match="updates"):
        Gibbs(normal_normal, updates={"mu": 3.0})
    mcmc = MCMC(Gibbs(normal_normal, updates={"sigma": normal_normal_update}), num_samples=2,
                disable_progbar=True)
    with pytest.raises(ValueError, match="'sigma' is not a latent sample site"):
        mcmc.run(NN_Y)


def test_user_update_wrong_shape():
    mcmc = MCMC(Gibbs(normal_normal, updates={"mu": lambda v, y: torch.zeros(3)}),
                num_samples=2, num_chains=2, chain_method="vectorized", disable_progbar=True)
    with pytest.raises(ValueError, match=r"updates\['mu'\] returned"):
        mcmc.run(NN_Y)


def test_nonfinite_initial_point_names_site():
    def model(y):
        theta = pyro.sample("theta", dist.LogNormal(y.new_tensor(0.0), 1.0))
        pyro.sample("y", dist.Uniform(0.0, theta), obs=y)

    mcmc = MCMC(Gibbs(model), num_samples=2, disable_progbar=True,
                initial_params={"theta": torch.tensor(0.0, dtype=torch.float64)})
    with pytest.raises(ValueError, match="non-finite log density.*'y'"):
        mcmc.run(torch.tensor(5.0, dtype=torch.float64))
