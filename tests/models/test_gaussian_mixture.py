"""GaussianMixture: ordered-means prior, simulation, Gibbs on the assignments agreeing with
NUTS on the enumerated model."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import MCMC as PyroMCMC
from pyro.infer import NUTS

from pyro_dgm.compare import from_mcmc
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.inference import MCMC, Gibbs
from pyro_dgm.models import GaussianMixture, SortedNormal


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sorted_normal_is_a_normalized_density_on_ordered_vectors():
    d = SortedNormal(torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.5), 2,
                     validate_args=False)  # the grid holds unordered points too
    x = d.sample((1000,))
    assert x.shape == (1000, 2) and (x[:, 0] <= x[:, 1]).all()
    grid = torch.linspace(-8, 9, 601, dtype=torch.float64)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([a, b], -1)
    ordered = pts[..., 0] < pts[..., 1]
    density = torch.where(ordered, d.log_prob(pts).exp(), torch.zeros(()))
    step = float(grid[1] - grid[0])
    assert math.isclose(float(density.sum()) * step**2, 1.0, abs_tol=0.01)  # K! included
    assert d.expand((3,)).sample().shape == (3, 2)


def test_simulate_and_prior_predictive():
    mix = GaussianMixture(3)
    data = mix.simulate(200, locs=[2.0, -1.0, 5.0], seed=0)
    assert data.x.shape == (200,) and data.x.dtype == torch.float64
    assert torch.equal(data.locs, torch.tensor([-1.0, 2.0, 5.0], dtype=torch.float64))
    assert set(data.z.tolist()) <= {0, 1, 2}
    trace = pyro.poutine.trace(mix).get_trace(num_data=7)
    assert trace.nodes["x"]["value"].shape == (7,)
    assert (trace.nodes["locs"]["value"].diff() > 0).all()


def test_bad_input():
    with pytest.raises(ValueError, match="num_components"):
        GaussianMixture(0)
    with pytest.raises(ValueError, match="loc_scale"):
        GaussianMixture(2, loc_scale=-1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(2).simulate(10, weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="num_data"):
        GaussianMixture(2)()


def _mcse(draws: np.ndarray) -> tuple[float, float]:
    return float(draws.mean()), float(draws.std() / math.sqrt(float(arviz.ess(draws))))


def test_gibbs_agrees_with_nuts_on_enumerated_model():
    mix = GaussianMixture(2)
    data = mix.simulate(100, locs=[-2.0, 2.0], seed=1)

    # some chains start with both means on one cluster: give them time to separate
    gibbs = MCMC(Gibbs(mix), num_samples=500, warmup_steps=700, num_chains=8,
                 chain_method="vectorized", disable_progbar=True)
    gibbs.run(data.x)
    g_locs = gibbs.get_samples(group_by_chain=True)["locs"].numpy()
    assert gibbs.get_samples()["z"].dtype == torch.float64

    nuts = PyroMCMC(NUTS(mix, max_plate_nesting=1), num_samples=250, warmup_steps=200,
                    disable_progbar=True)
    nuts.run(data.x)
    n_locs = nuts.get_samples(group_by_chain=True)["locs"].numpy()
    assert "z" not in nuts.get_samples()  # summed out

    for k in range(2):
        gm, gse = _mcse(g_locs[..., k])
        nm, nse = _mcse(n_locs[..., k])
        assert abs(gm - nm) < 4 * math.hypot(gse, nse), (k, gm, nm, gse, nse)
        assert abs(gm - float(data.locs[k])) < 0.6  # near the truth: no label switching
    # ArviZ export of the Gibbs run, assignments included as floats
    idata = from_mcmc(gibbs)
    assert idata.posterior["z"].shape == (8, 500, 100)
    summary = arviz.summary(idata, var_names=["locs", "weights", "scales"])
    assert (summary["r_hat"] < 1.05).all() and (summary["ess_bulk"] > 100).all()
