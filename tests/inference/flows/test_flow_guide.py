"""FlowGuide, FlowDistribution and the energy targets (exact log Z by quadrature)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_dgm.inference.flows import FLOWS, FlowDistribution, FlowGuide, build_flows
from pyro_dgm.models.energy import ENERGIES, LOG_Z, EnergyTarget, energy_kl, energy_log_z

#: the reference sheet's values, from a plain grid sum that counts the box edges twice
REFERENCE_SHEET = {("U1", 4.0): 1.87750, ("U2", 4.0): 2.08221, ("U3", 4.0): 2.64183,
                   ("U4", 4.0): 2.68474, ("U2", 6.0): 2.48772, ("U3", 6.0): 3.04734,
                   ("U4", 6.0): 3.11633}


@pytest.mark.parametrize("name", list(ENERGIES))
def test_energy_log_z_by_quadrature(name):
    for a in (4.0, 6.0):
        value = energy_log_z(name, a, num_points=801)
        assert value == pytest.approx(LOG_Z[(name, a)], abs=2e-6)
        if (name, a) in REFERENCE_SHEET:
            assert value == pytest.approx(REFERENCE_SHEET[(name, a)], abs=2e-4)
    # Simpson has converged: a coarser grid agrees
    assert energy_log_z(name, 4.0, num_points=401) == pytest.approx(LOG_Z[(name, 4.0)],
                                                                     abs=1e-5)


def test_energy_model_log_joint_is_minus_u():
    z = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    for name, energy in ENERGIES.items():
        target = EnergyTarget(name)
        trace = pyro.poutine.trace(pyro.poutine.condition(target, {"z": z})).get_trace()
        trace.compute_log_prob()
        total = sum(s["log_prob"] for s in trace.nodes.values() if s["type"] == "sample")
        torch.testing.assert_close(total, -energy(z))
    w1 = math.sin(2 * math.pi * 0.3 / 4)
    assert float(ENERGIES["U2"](torch.tensor([0.3, -1.2]))) == pytest.approx(
        0.5 * ((-1.2 - w1) / 0.4) ** 2)


@pytest.mark.parametrize("flow", ["iaf", "realnvp"])
def test_flow_distribution_normalizes(flow):
    torch.manual_seed(0)
    flows = build_flows(flow, 2, 3, hidden_dims=(8,)).double()
    with torch.no_grad():
        for p in flows.parameters():
            p.normal_(0, 0.15)
    q = FlowDistribution(torch.tensor([0.2, -0.1], dtype=torch.float64),
                         torch.tensor([0.8, 1.2], dtype=torch.float64), flows)
    grid = torch.linspace(-15, 15, 751, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = q.log_prob(z).exp().sum() * (grid[1] - grid[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=2e-3)
    value = q.rsample((4,))
    torch.testing.assert_close(q.log_prob(value), q.log_prob(value.clone()))
    assert q.expand((3, 4)).rsample().shape == (3, 4, 2)


def test_bad_input_names_the_argument():
    target = EnergyTarget("U1")
    with pytest.raises(ValueError, match="unknown flow 'maf'"):
        FlowGuide(target, flow="maf")
    with pytest.raises(ValueError, match="num_flows"):
        FlowGuide(target, flow="planar", num_flows=0)
    with pytest.raises(ValueError, match="name"):
        EnergyTarget("U5")


@pytest.mark.parametrize("flow", list(FLOWS))
def test_flow_guide_on_a_constrained_model(flow, dtype):
    def model():
        a = pyro.sample("a", dist.Normal(torch.zeros((), dtype=dtype), 1.0))
        pyro.sample("b", dist.LogNormal(a.unsqueeze(-1).expand(a.shape + (2,)), 0.5)
                    .to_event(1))

    guide = FlowGuide(model, flow=flow, num_flows=2, hidden_dims=(8,))
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    for _ in range(3):
        assert math.isfinite(svi.step())
    sample = guide()
    assert sample["b"].shape == (2,) and (sample["b"] > 0).all()
    assert sample["a"].dtype == dtype


def test_u1_short_run_makes_real_progress():
    target = EnergyTarget("U1")
    guide = FlowGuide(target, flow="realnvp", num_flows=8)
    guide()  # set up
    before = energy_kl(target, guide, 4000)
    elbo = Trace_ELBO(num_particles=64, vectorize_particles=True, max_plate_nesting=0)
    svi = SVI(target, guide, pyro.optim.ClippedAdam({"lr": 3e-3, "lrd": 0.1 ** (1 / 150)}),
              elbo)
    for _ in range(150):
        svi.step()
    after = energy_kl(target, guide, 4000)
    # the initial guide is a broad Gaussian (KL > 2 nats); 150 steps must more than halve it
    assert before > 2.0
    assert 0 <= after + 0.05 and after < 0.5 * before
