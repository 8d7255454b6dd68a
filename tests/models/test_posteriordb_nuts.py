"""Pyro NUTS on a posteriordb translation agrees with posteriordb's reference draws.

Stan's rule (posteriordb, the Stan benchmark): for every parameter element, |mean - reference
mean| < 0.25 reference sd; and the sd ratio within 0.8-1.25. With 4 chains x 1,000 draws the
Monte Carlo error of a mean is about sd / sqrt(ESS) (ESS >= 400 checked here: <= 0.05 sd),
and the reference's own (1,000 thinned draws of well-mixed chains) about 0.03 sd, so the
0.25 sd rule fails only on a real disagreement; likewise the sd ratio's error is about
1 / sqrt(2 ESS) <= 4%, well inside 0.8-1.25. Run on the two quickest posteriors (Pyro NUTS
iterations per second, measured: gp_regr 3 parameters x 11 points, earnings 5 x 1,192;
kidiq's unstandardized predictor makes its NUTS trees ~7x deeper).

Pyro's ``init_to_*`` strategies draw from the prior, which ``ImproperUniform`` (Stan's flat
priors) refuses: such sites start at a uniform point of (-2, 2) in the unconstrained space
(:func:`pyro_dgm.inference.model_info.support_point`), as ``init_to_uniform`` would give;
``max_plate_nesting`` is given so that Pyro does not trace the model from the prior.
"""

import numpy as np
import pyro
import pytest
import torch
from arviz import ess
from posteriordb_checks import require_bundle, translation
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_uniform

from pyro_dgm.data import posteriordb as pdb
from pyro_dgm.data.arrays import to_tensors
from pyro_dgm.inference.model_info import support_point

QUICKEST = ["gp_pois_regr-gp_regr", "earnings-logearn_interaction_z"]



def _init(site):
    try:
        return init_to_uniform(site)
    except NotImplementedError:  # ImproperUniform
        return support_point(site, radius=2.0, like=torch.zeros((), dtype=torch.float64))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize("name", QUICKEST)
def test_nuts_agrees_with_the_reference(name):
    require_bundle()
    model = translation(name)
    data = to_tensors(pdb.load_posteriordb_data(name), dtype=torch.float64)
    reference = pdb.load_posteriordb_reference(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    chains = {}
    try:
        for chain in range(4):  # 4 independent Pyro NUTS chains, one after another
            pyro.set_rng_seed(chain)
            kernel = NUTS(model, init_strategy=_init, max_plate_nesting=1, jit_compile=True,
                          ignore_jit_warnings=True)
            mcmc = MCMC(kernel, num_samples=1000, warmup_steps=1000, disable_progbar=True)
            mcmc.run(**data)
            for k, v in mcmc.get_samples().items():
                chains.setdefault(k, []).append(v.double().numpy())
    finally:
        torch.set_num_threads(threads)
    for param, ref in reference.items():
        draws = np.stack(chains[param]).reshape(4, 1000, *ref.shape[2:])
        flat = draws.reshape(4, 1000, -1)
        worst = min(float(ess(flat[:, :, j])) for j in range(flat.shape[-1]))
        assert worst >= 400, f"{name}: {param} ESS {worst:.0f} below 400"
        ref_mean, ref_sd = ref.mean(axis=(0, 1)), ref.std(axis=(0, 1), ddof=1)
        mean, sd = draws.mean(axis=(0, 1)), draws.std(axis=(0, 1), ddof=1)
        z = np.abs(mean - ref_mean) / ref_sd
        assert (z < 0.25).all(), f"{name}: {param} |mean - ref| / ref sd = {z}"
        ratio = sd / ref_sd
        assert ((ratio > 0.8) & (ratio < 1.25)).all(), f"{name}: {param} sd ratio {ratio}"
