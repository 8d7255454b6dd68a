"""``from_guide`` writes ``log_q``: the guide's own density of every exported draw (issue 13)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from torch.distributions import biject_to

from pyro_dgm.compare import from_guide
from pyro_dgm.inference import FlowGuide

NUM = 50


def model(x, y=None):
    beta = pyro.sample("beta", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ beta, sigma), obs=y)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5], dtype=torch.float64) + 0.3 * torch.randn(
        30, generator=g, dtype=torch.float64)
    return x, y


def _train(guide, x, y, steps=5):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(steps):
        svi.step(x, y)
    return guide


def _unconstrained(idata, name, support):
    value = torch.as_tensor(idata.posterior[name].values).reshape(-1, *idata.posterior[name]
                                                                   .shape[2:])
    transform = biject_to(support)
    u = transform.inv(value)
    log_jac = transform.log_abs_det_jacobian(u, value)
    return u.reshape(u.shape[0], -1), log_jac.reshape(u.shape[0], -1).sum(-1)


def _expected_log_q(guide, idata):
    """log q(θ) = log q_base(u) - log|dθ/du|, from the guide's own distribution."""
    beta_u, beta_jac = _unconstrained(idata, "beta", dist.constraints.real)
    sigma_u, sigma_jac = _unconstrained(idata, "sigma", dist.constraints.positive)
    if isinstance(guide, AutoNormal):
        base = 0.0
        for name, u in (("beta", beta_u), ("sigma", sigma_u)):
            loc, scale = guide._get_loc_and_scale(name)
            base = base + dist.Normal(loc.reshape(-1), scale.reshape(-1)).log_prob(u).sum(-1)
    else:  # AutoContinuous: one unconstrained vector in the prototype trace's site order
        pieces = {"beta": beta_u, "sigma": sigma_u}
        zeta = torch.cat([pieces[name] for name, _ in
                          guide.prototype_trace.iter_stochastic_nodes()], -1)
        base = guide.get_posterior().log_prob(zeta)
    return base - beta_jac - sigma_jac


@pytest.mark.parametrize("make", [
    lambda: AutoNormal(model),
    lambda: AutoMultivariateNormal(model),
    lambda: FlowGuide(model, flow="realnvp", num_flows=2),
], ids=["AutoNormal", "AutoMultivariateNormal", "FlowGuide"])
def test_log_q_is_the_guides_density(make, data):
    x, y = data
    guide = _train(make(), x, y)
    idata = from_guide(model, guide, x, y, num_samples=NUM)
    log_q = torch.as_tensor(idata.sample_stats["log_q"].values).reshape(-1)
    with torch.no_grad():
        expected = _expected_log_q(guide, idata)
    assert log_q.shape == (NUM,) and torch.isfinite(log_q).all()
    torch.testing.assert_close(log_q, expected.to(log_q.dtype), atol=1e-10, rtol=0)


def test_log_q_per_chain_for_stacked_guides(data):
    x, y = data
    guides = []
    for i in range(2):
        with pyro.get_param_store().scope():
            pyro.set_rng_seed(i)
            guides.append(_train(AutoMultivariateNormal(model), x, y))
    idata = from_guide(model, guides, x, y, num_samples=NUM)
    assert idata.sample_stats["log_q"].shape == (2, NUM)
    assert idata.sample_stats["lp"].shape == (2, NUM)


def test_user_guide_is_scored_by_its_trace(data):
    x, y = data

    def guide(x, y=None):
        loc = pyro.param("loc", x.new_zeros(2))
        pyro.sample("beta", dist.Normal(loc, 0.1).to_event(1))
        pyro.sample("sigma", dist.LogNormal(x.new_tensor(-1.0), 0.2))

    _train(guide, x, y)
    idata = from_guide(model, guide, x, y, num_samples=NUM)
    beta = torch.as_tensor(idata.posterior["beta"].values).reshape(NUM, 2)
    sigma = torch.as_tensor(idata.posterior["sigma"].values).reshape(NUM)
    loc = pyro.param("loc").detach()
    expected = (dist.Normal(loc, 0.1).log_prob(beta).sum(-1)
                + dist.LogNormal(sigma.new_tensor(-1.0), 0.2).log_prob(sigma))
    torch.testing.assert_close(torch.as_tensor(idata.sample_stats["log_q"].values)
                               .reshape(NUM), expected, atol=1e-10, rtol=0)
