"""Flow guides with the package's objectives (IWAE/DReG) and with ``pyro-dgm compare``."""

import dataclasses

import pyro
import pytest
import torch

from pyro_dgm.compare.registry import METHODS, Problem, Settings
from pyro_dgm.inference.flows import AmortizedFlowGuide
from pyro_dgm.models import FactorAnalysis

inference = pytest.importorskip("pyro_dgm.inference")
IWAE = getattr(inference, "IWAE", None)


def _fa():
    W = torch.tensor([[2.0, 1.8], [1.0, 1.1], [1.5, 1.3]], dtype=torch.float64)
    fa = FactorAnalysis(3, 2, loc=torch.zeros(3, dtype=torch.float64), W=W,
                        psi=torch.full((3,), 0.5, dtype=torch.float64))
    return fa, fa.simulate(12, seed=0).x


@pytest.mark.skipif(IWAE is None, reason="pyro_dgm.inference.IWAE is not available")
@pytest.mark.parametrize("flow", ["realnvp", "iaf", None])
def test_amortized_flow_guide_with_iwae_dreg(flow):
    fa, x = _fa()
    guide = AmortizedFlowGuide(fa, flow=flow, num_flows=2, hidden_dims=(8,))
    guide(x)  # set up the parameters
    objective = IWAE(num_particles=5, estimator="dreg", max_plate_nesting=1)
    loss = objective.differentiable_loss(fa, guide, x)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in guide.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    svi = pyro.infer.SVI(fa, guide, pyro.optim.Adam({"lr": 1e-3}), objective)
    assert torch.isfinite(torch.tensor(svi.step(x)))


@pytest.mark.skipif(IWAE is None, reason="pyro_dgm.inference.IWAE is not available")
@pytest.mark.parametrize("flow", ["planar", "radial"])
def test_non_invertible_flow_with_dreg_says_why(flow):
    fa, x = _fa()
    guide = AmortizedFlowGuide(fa, flow=flow, num_flows=2)
    guide(x)
    objective = IWAE(num_particles=3, estimator="dreg", max_plate_nesting=1)
    with pytest.raises(ValueError, match="inverse|score"):
        objective.differentiable_loss(fa, guide, x)
    # the plain IWAE estimator only scores the guide's own draws: fine
    loss = IWAE(num_particles=3, max_plate_nesting=1).differentiable_loss(fa, guide, x)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("method", ["flow-planar", "flow-radial", "flow-iaf", "flow-realnvp"])
def test_compare_methods_run(method):
    fa, x = _fa()
    problem = Problem("fa-fixed", fa, (x,), var_names=["z"])
    settings = dataclasses.replace(Settings(), num_steps=3, num_samples=10, num_chains=1,
                                   progress=False)
    idata = METHODS.get(method).run(problem, settings)
    assert idata.posterior["z"].shape[:2] == (1, 10)
    # full-rank ADVI first, then the flow on it: both stages' steps are recorded
    attrs = idata.posterior.attrs
    assert (attrs["affine_steps"], attrs["flow_steps"], attrs["svi_steps"]) == (3, 3, 6)
    assert attrs["rejected_steps"] == 0
