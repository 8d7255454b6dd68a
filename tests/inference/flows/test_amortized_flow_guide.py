"""AmortizedFlowGuide: factor analysis with exact evidence, plates, particles, bad input."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_dgm.inference.flows import AmortizedFlowGuide, NotInvertibleError
from pyro_dgm.models import FactorAnalysis, fa_log_marginal, fa_posterior

FLOW_MENU = [None, "planar", "radial", "iaf", "realnvp"]


def _fa(dtype=torch.float64):
    # nearly collinear loadings: the exact posterior of z has correlation -0.93
    W = torch.tensor([[2.0, 1.8], [1.0, 1.1], [1.5, 1.3], [0.5, 0.6]], dtype=dtype)
    psi = torch.full((4,), 0.5, dtype=dtype)
    loc = torch.zeros(4, dtype=dtype)
    return FactorAnalysis(4, 2, loc=loc, W=W, psi=psi), loc, W, psi


def _fit(fa, x, flow, steps):
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    guide = AmortizedFlowGuide(fa, flow=flow, num_flows=2, hidden_dims=(16,),
                               encoder_hidden=(32,))
    optim = pyro.optim.ClippedAdam({"lr": 2e-2, "lrd": 0.1 ** (1 / steps)})
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(fa, guide, optim, elbo)
    for _ in range(steps):
        svi.step(x)
    return guide


def test_flow_guides_close_most_of_the_diagonal_gap():
    fa, loc, W, psi = _fa()
    x = fa.simulate(64, seed=0).x
    _, cov = fa_posterior(x, loc, W, psi)
    assert cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt() < -0.9  # strongly correlated
    exact = float(fa_log_marginal(x, loc, W, psi).sum())
    evaluate = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    gaps = {}
    for flow in (None, "realnvp", "iaf"):
        guide = _fit(fa, x, flow, 150)
        gaps[flow] = exact + evaluate.loss(fa, guide, x)
    # -1/2 log(1 - rho^2) per row is the least a diagonal Gaussian can lose: ~61 nats here
    assert gaps[None] > 40
    assert gaps["realnvp"] < 0.5 * gaps[None]
    assert gaps["iaf"] < 0.5 * gaps[None]
    assert min(gaps.values()) > -1.0  # a bound: never above log p(x) beyond MC noise


@pytest.mark.parametrize("flow", FLOW_MENU)
def test_subsample_particles_and_scoring(flow, dtype):
    fa, *_ = _fa(dtype)
    x = fa.simulate(30, seed=1).x
    guide = AmortizedFlowGuide(fa, flow=flow, num_flows=2, hidden_dims=(8,))
    idx = torch.tensor([3, 7, 11, 29])
    trace = pyro.poutine.trace(guide).get_trace(x, subsample=idx)
    assert torch.equal(trace.nodes["data"]["value"], idx)
    site = trace.nodes["z"]
    assert site["value"].shape == (4, 2) and site["value"].dtype == dtype
    assert site["fn"].batch_shape == (4,)
    # the rows encoded are x[idx]: same draw as passing the batch with num_data
    pyro.set_rng_seed(5)
    a = guide(x, subsample=idx)["z"]
    pyro.set_rng_seed(5)
    b = guide(x[idx], subsample=idx, num_data=30)["z"]
    torch.testing.assert_close(a, b)
    # vectorized particles under SVI
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(fa, guide, x, subsample=idx)
    assert torch.isfinite(loss)
    loss.backward()
    # scoring a value the guide did not produce
    fn = site["fn"]
    other = site["value"].detach().clone() + 0.1
    if flow in ("planar", "radial"):
        assert not guide.invertible
        with pytest.raises(ValueError, match="no inverse"):
            fn.log_prob(other)
        with pytest.raises(NotInvertibleError):
            fn.log_prob(site["value"].clone())
    else:
        assert guide.invertible
        assert fn.log_prob(other).shape == (4,)
        torch.testing.assert_close(fn.log_prob(site["value"].clone()),
                                   fn.log_prob(site["value"]), atol=1e-4, rtol=1e-4)


def test_constrained_local_site_and_density():
    def model(x):
        with pyro.plate("data", len(x)):
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, s), obs=x)

    x = torch.randn(5, dtype=torch.float64)
    guide = AmortizedFlowGuide(model, flow="realnvp", num_flows=2, hidden_dims=(8,))
    trace = pyro.poutine.trace(guide).get_trace(x)
    site = trace.nodes["s"]
    assert (site["value"] > 0).all()
    torch.testing.assert_close(site["fn"].log_prob(site["value"].clone()),
                               site["fn"].log_prob(site["value"]), atol=1e-8, rtol=1e-8)


def test_bad_input_names_the_problem():
    fa, *_ = _fa()
    with pytest.raises(ValueError, match="unknown flow 'nice'"):
        AmortizedFlowGuide(fa, flow="nice")
    with pytest.raises(ValueError, match="num_flows"):
        AmortizedFlowGuide(fa, flow="iaf", num_flows=0)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    x = torch.randn(6)
    with pytest.raises(ValueError, match="'mu' is not in a plate"):
        AmortizedFlowGuide(model, flow="iaf")(x)
    with pytest.raises(ValueError, match="'w' is not a latent sample site"):
        AmortizedFlowGuide(model, flow="iaf", sites=["w"])(x)
    z = AmortizedFlowGuide(model, flow="iaf", sites=["z"])(x)["z"]
    assert z.shape == (6,)
