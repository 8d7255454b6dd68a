"""FlowGuide started on an affine fit (``base=``): at the identity it *is* that Gaussian."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoLaplaceApproximation, AutoMultivariateNormal

from pyro_dgm.inference import Pathfinder
from pyro_dgm.inference.flows import FLOWS, FlowGuide


def _model(dtype):
    def model():
        a = pyro.sample("a", dist.Normal(torch.zeros((), dtype=dtype), 1.0))
        b = pyro.sample("b", dist.LogNormal(a.unsqueeze(-1).expand(a.shape + (2,)), 0.5)
                        .to_event(1))
        pyro.sample("y", dist.Normal(b, 0.3).to_event(1),
                    obs=torch.tensor([1.5, 0.4], dtype=dtype))

    return model


def _gaussian(model, dtype):
    """An AutoMultivariateNormal with a correlated, badly scaled, non-trivial fit."""
    gauss = AutoMultivariateNormal(model)
    gauss()
    with torch.no_grad():
        gauss.loc.copy_(torch.tensor([0.3, -0.2, 0.5], dtype=dtype))
        gauss.scale = torch.tensor([0.7, 1e-2, 40.0], dtype=dtype)
        gauss.scale_tril = torch.tensor([[1.0, 0, 0], [0.5, 1, 0], [-0.3, 0.2, 1]],
                                        dtype=dtype)
    return gauss


@pytest.mark.parametrize("flow", list(FLOWS))
def test_at_the_identity_draws_and_elbo_equal_the_affine_base(flow, dtype):
    model = _model(dtype)
    gauss = _gaussian(model, dtype)
    guide = FlowGuide(model, flow=flow, num_flows=3, hidden_dims=(8,), base=gauss)
    guide()  # set up (its init strategy draws random numbers)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for seed in range(3):
        draws = {}
        for name, g in (("flow", guide), ("gauss", gauss)):
            torch.manual_seed(seed)
            with pyro.plate("draws", 5, dim=-1):
                draws[name] = {k: v.detach() for k, v in g().items()}
        for site in ("a", "b"):
            assert draws["flow"][site].dtype == dtype
            torch.testing.assert_close(draws["flow"][site], draws["gauss"][site],
                                       atol=tol, rtol=tol)
        elbo = Trace_ELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=0)
        losses = []
        for g in (guide, gauss):
            torch.manual_seed(100 + seed)
            losses.append(elbo.loss(model, g))
        assert losses[0] == pytest.approx(losses[1], abs=tol * max(abs(losses[1]), 1))


def test_the_flow_scores_arbitrary_values_like_the_gaussian():
    dtype = torch.float64
    model = _model(dtype)
    gauss = _gaussian(model, dtype)
    guide = FlowGuide(model, flow="realnvp", num_flows=2, base=gauss)
    guide()
    value = torch.randn(6, 3, dtype=dtype) * 2
    torch.testing.assert_close(guide.get_posterior().log_prob(value),
                               gauss.get_posterior().log_prob(value), atol=1e-10, rtol=0)


def test_other_kinds_of_base_give_the_same_map():
    dtype = torch.float64
    model = _model(dtype)
    gauss = _gaussian(model, dtype)
    mvn = gauss.get_posterior()
    loc, tril = mvn.loc.detach(), mvn.scale_tril.detach()
    cov = dist.MultivariateNormal(loc, covariance_matrix=tril @ tril.T)
    cov.__dict__.pop("scale_tril", None)  # only the covariance
    for base in ((loc, tril), mvn, gauss):
        guide = FlowGuide(model, flow="iaf", num_flows=1, base=base)
        guide()
        torch.testing.assert_close(guide.base_loc, loc, atol=0, rtol=0)
        torch.testing.assert_close(guide.base_scale_tril, tril, atol=1e-12, rtol=0)
    laplace = AutoLaplaceApproximation(model)
    svi = SVI(model, laplace, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(200):
        svi.step()
    gaussian = laplace.laplace_approximation()
    guide = FlowGuide(model, flow="realnvp", num_flows=2, base=gaussian)
    guide()
    torch.testing.assert_close(guide.base_loc, laplace.loc.detach(), atol=0, rtol=0)


def test_a_fitted_pathfinder_is_a_base():
    dtype = torch.float64
    model = _model(dtype)
    pyro.set_rng_seed(0)
    pf = Pathfinder(model, num_paths=1).fit()
    q = pf.get_posterior()
    cov = q.covariance_matrix
    torch.testing.assert_close(cov.diagonal(), q.variance, atol=1e-12, rtol=1e-10)
    value = torch.randn(5, 3, dtype=dtype)
    torch.testing.assert_close(dist.MultivariateNormal(q.loc, cov).log_prob(value),
                               q.log_prob(value), atol=1e-10, rtol=0)
    guide = FlowGuide(model, flow="realnvp", num_flows=2, base=pf)
    guide()
    torch.testing.assert_close(guide.base_loc, q.loc, atol=0, rtol=0)
    tril = guide.base_scale_tril
    torch.testing.assert_close(tril @ tril.T, cov, atol=1e-12, rtol=1e-10)


def test_training_from_the_base_improves_the_elbo():
    """On a banana the full-rank Gaussian is far from the posterior; the flow started on it
    begins at the Gaussian's ELBO and climbs above it."""
    dtype = torch.float64

    def banana():
        x = pyro.sample("x", dist.Normal(torch.zeros((), dtype=dtype), 1.0))
        pyro.sample("y", dist.Normal(x * x - 1, 0.5))

    pyro.set_rng_seed(0)
    gauss = AutoMultivariateNormal(banana, init_scale=0.5)
    elbo = Trace_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=0)
    svi = SVI(banana, gauss, pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.995}), elbo)
    for _ in range(500):
        svi.step()
    guide = FlowGuide(banana, flow="realnvp", num_flows=4, hidden_dims=(16,), base=gauss)
    guide()
    big = Trace_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=0)
    before = big.loss(banana, gauss)
    assert big.loss(banana, guide) == pytest.approx(before, abs=0.05)  # MC error ~0.01
    svi = SVI(banana, guide, pyro.optim.ClippedAdam({"lr": 5e-3, "lrd": 0.995}), elbo)
    for _ in range(300):
        svi.step()
    after = big.loss(banana, guide)
    assert after < before - 0.1  # a lower loss is a higher ELBO


def test_a_bad_base_names_the_argument():
    dtype = torch.float64
    model = _model(dtype)
    eye = torch.eye(3, dtype=dtype)
    zero = torch.zeros(3, dtype=dtype)
    bad = [((zero, eye, eye), "got 3 items"), ((zero[:2], eye[:2, :2]), "shapes"),
           ((zero, eye + torch.triu(eye.new_ones(3, 3), 1)), "lower triangular"),
           ((zero, -eye), "positive diagonal"), ((zero * torch.nan, eye), "finite"),
           (object(), "Gaussian")]
    for base, match in bad:
        with pytest.raises(ValueError, match=f"base: .*{match}"):
            FlowGuide(model, flow="planar", num_flows=1, base=base)()

    def other():
        pyro.sample("a", dist.Normal(torch.zeros(3, dtype=dtype), 1.0).to_event(1))

    gauss = AutoMultivariateNormal(other)
    gauss()
    with pytest.raises(ValueError, match="base: a guide over other sites"):
        FlowGuide(model, flow="planar", num_flows=1, base=gauss)()
