"""The ``hmc`` comparison method: ChEESHMC, 64 chains from jittered MAP starts under the
Laplace metric."""

import pytest
import torch

from pyro_dgm.compare import METHODS, MODELS, default_settings, nested_rhat
from pyro_dgm.compare.methods.samplers import HMC_CHAINS


@pytest.mark.slow
def test_hmc_method_runs_and_exports():
    torch.manual_seed(0)
    settings = default_settings(quick=True, num_samples=70, num_warmup=50, progress=False)
    problem = MODELS.get("fa-synthetic").build(settings)
    idata = METHODS.get("hmc").run(problem, settings)
    assert idata.posterior.sizes["chain"] == HMC_CHAINS
    assert idata.posterior.sizes["draw"] == 70  # more draws than chains: ArviZ warns otherwise
    for name in ("accept_prob", "step_size", "num_steps", "energy", "diverging"):
        assert name in idata.sample_stats
    assert idata.posterior.attrs["chain_start"].startswith("MAP")
    assert idata.posterior.attrs["chain_start"].endswith("Laplace metric")
    rhat = nested_rhat(idata, 8)
    assert all(bool((rhat[v] > 0.9).all()) for v in rhat.data_vars)
