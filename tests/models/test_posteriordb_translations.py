"""Each Pyro translation of a posteriordb posterior has Stan's log density, up to a constant.

The fixtures (``<bundle>/fixtures/<posterior>.json``, written by the posteriordb fixture
script, see docs/posteriordb.md) hold 20 draws per posterior and Stan's
``log_prob(unconstrain_pars(draw), adjust_transform=False)`` at each: the log density of the
*constrained* parameters, without the Jacobian of Stan's unconstraining transform. The test
conditions the Pyro model on the same draws (float64) and sums the ``log_prob`` of every site
of the trace: priors (including :class:`~pyro.distributions.ImproperUniform` for Stan's
implicit flat priors), observed sites and factors. Pyro scores a site at its value in the
site's own (constrained) support, with no Jacobian either, so both sides measure every
parameter the same way:

- ``real`` and ``vector`` parameters (``mu``, ``beta``, ``zgp_1``, ...): at the value;
- ``real<lower=0>`` (``sigma``, ``rho``, ``alpha``, ``sdgp_1``, ``lscale_1``, ...): at the
  positive value, density with respect to Lebesgue measure on (0, inf) — no ``log sigma``;
- ``simplex[K]`` (``theta1``, ``theta2``): at the K components, density with respect to
  Lebesgue measure on the first K - 1 (Stan's and Pyro's Dirichlet agree on this);
- ``positive_ordered[K]`` (``phi``, ``lambda``): at the K increasing positive values,
  density with respect to Lebesgue measure on R^K restricted to the ordered cone.

The difference pyro - stan must then be one constant over the 20 draws (the normalizing
constants Stan drops with ``~``). Tolerance: ``max - min < 1e-8 * max(1, L / 1000)`` with
``L = max |stan log density|``: 1e-8 absolute for log densities up to 1,000 in magnitude,
and a relative 1e-11 above (L is ~1,900 for ``hmm_drive_0``, ~1,500 for ``kidiq``) — orders
of magnitude above the rounding of summing a few thousand float64 terms (~ n * 2.2e-16 * L;
the spreads measured are 4e-14 to 3e-11), and orders below what any translation slip (a
missing term, a wrong scale, a Jacobian) changes over 20 posterior draws.
"""

import json
import math

import numpy as np
import pyro
import pytest
import torch
from posteriordb_checks import require_bundle, translation
from pyro.poutine.util import site_is_subsample

from pyro_dgm.compare.problems.posteriordb import MODEL_OPTIONS
from pyro_dgm.data import posteriordb as pdb
from pyro_dgm.data.arrays import to_tensors
from pyro_dgm.models.posteriordb import POSTERIORS


def _fixture(name: str) -> dict:
    require_bundle()
    path = pdb.posteriordb_dir() / "fixtures" / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"{name}: no Stan log-density fixture at {path}")
    return json.loads(path.read_text())



def _log_joint(model, data: dict, values: dict) -> torch.Tensor:
    trace = pyro.poutine.trace(pyro.poutine.condition(model, data=values)).get_trace(**data)
    latent = [n for n, s in trace.nodes.items() if s["type"] == "sample"
              and not s["is_observed"] and not site_is_subsample(s)]
    assert not latent, f"sites not conditioned on a fixture draw: {latent}"
    return trace.log_prob_sum()


def _draws(fixture: dict, index) -> dict:
    return {k: torch.tensor(np.asarray(v, dtype=np.float64)[index])
            for k, v in fixture["draws"].items()}


@pytest.mark.parametrize("name", list(POSTERIORS))
def test_log_density_matches_stan_up_to_a_constant(name):
    fixture = _fixture(name)
    model = translation(name)
    data = to_tensors(pdb.load_posteriordb_data(name), dtype=torch.float64)
    stan = np.asarray(fixture["log_density"])
    pyro_lp = np.array([float(_log_joint(model, data, _draws(fixture, i)))
                        for i in range(len(stan))])
    diff = pyro_lp - stan
    tolerance = 1e-8 * max(1.0, np.abs(stan).max() / 1000)
    assert np.isfinite(diff).all()
    assert diff.max() - diff.min() < tolerance, (
        f"{name}: pyro - stan varies by {diff.max() - diff.min():.3g} over the draws "
        f"(tolerance {tolerance:.3g}); differences {diff}")


@pytest.mark.parametrize("name", list(POSTERIORS))
def test_fixture_measures_positive_parameters_without_jacobian(name):
    """Check of the fixtures themselves: for models whose parameters are all ``real`` or
    ``real<lower=0>``, Stan's Jacobian-adjusted density exceeds the plain one by exactly
    the sum of ``log x`` over the positive parameters."""
    fixture = _fixture(name)
    params = pdb.posteriordb_parameters(name)
    if any(p.stan_type not in ("real", "vector") or p.constraint not in ("", "lower=0")
           for p in params.values()):
        pytest.skip(f"{name}: has simplex/ordered parameters")
    gap = np.asarray(fixture["log_density_jacobian"]) - np.asarray(fixture["log_density"])
    logs = sum(np.log(np.asarray(fixture["draws"][k], dtype=np.float64)).reshape(20, -1)
               .sum(-1) for k, p in params.items() if p.constraint == "lower=0")
    np.testing.assert_allclose(gap, logs, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", [n for n, o in MODEL_OPTIONS.items() if o["vectorizable"]])
def test_vectorized_log_density_matches_draw_by_draw(name):
    """Posteriors marked ``vectorizable`` in the comparison: the model under a plate of the
    20 draws to the left of its plates scores each draw as the draw-by-draw trace does."""
    fixture = _fixture(name)
    model = translation(name)
    data = to_tensors(pdb.load_posteriordb_data(name), dtype=torch.float64)
    nesting = MODEL_OPTIONS[name]["max_plate_nesting"]
    shapes = {k: p.shape for k, p in pdb.posteriordb_parameters(name).items()}
    batched = {k: v.reshape(len(v), *([1] * nesting), *shapes[k])
               for k, v in _draws(fixture, slice(None)).items()}
    with pyro.plate("_draws", len(fixture["log_density"]), dim=-(nesting + 1)):
        trace = pyro.poutine.trace(pyro.poutine.condition(model, data=batched)).get_trace(
            **data)
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            lp = site["log_prob"]
            assert lp.dim() >= nesting + 1 and lp.shape[-(nesting + 1)] == 20, site["name"]
            total = total + lp.reshape(*lp.shape[:lp.dim() - nesting], -1).sum(-1)
    expected = [float(_log_joint(model, data, _draws(fixture, i))) for i in range(20)]
    np.testing.assert_allclose(total.reshape(-1).numpy(), expected, rtol=1e-12,
                               atol=1e-9 * max(1.0, max(map(abs, expected)) / 1000))
    assert not math.isnan(float(total.sum()))
