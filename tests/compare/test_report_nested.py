"""Nested R-hat and SVI steps in the comparison's tables (issue 14)."""

import numpy as np

from pyro_dgm.compare import compare_posteriors, default_settings, nested_rhat, summarize
from pyro_dgm.compare._arviz import arviz, set_attrs
from pyro_dgm.compare.methods.samplers import hmc_settings
from pyro_dgm.defaults import COMPARE_HMC_RUN


def _idata(draws: dict, attrs: dict):
    idata = arviz.from_dict(posterior=draws)
    set_attrs(idata, attrs)
    return idata


def test_nested_r_hat_for_many_chains_and_steps_for_vi():
    rng = np.random.default_rng(0)
    stuck = rng.standard_normal((32, 50))
    stuck[:4] += 3.0  # the first superchain (4 chains of 32 / 8) sits elsewhere
    idatas = {
        "nuts": _idata({"x": rng.standard_normal((4, 500))}, {"inference_kind": "mcmc"}),
        "many": _idata({"x": rng.standard_normal((32, 50))}, {"inference_kind": "mcmc"}),
        "stuck": _idata({"x": stuck}, {"inference_kind": "mcmc", "num_superchains": 4}),
        "vi": _idata({"x": rng.standard_normal((1, 2000))},
                     {"inference_kind": "vi", "svi_steps": 750}),
    }
    table = compare_posteriors(idatas, reference="nuts").set_index("method")
    assert np.isnan(table.loc["nuts", "nested_r_hat"])  # 4 chains: ordinary R-hat only
    assert np.isnan(table.loc["vi", "nested_r_hat"])
    assert table.loc["many", "nested_r_hat"] < 1.05
    expected = float(nested_rhat(idatas["stuck"], 4)["x"])  # the attribute's 4 superchains
    assert np.isclose(table.loc["stuck", "nested_r_hat"], expected) and expected > 1.1
    summary = summarize(table.reset_index()).set_index("method")
    assert summary.loc["stuck", "max_nested_r_hat"] == expected
    assert summary.loc["vi", "steps"] == 750 and np.isnan(summary.loc["nuts", "steps"])
    plain = summarize(compare_posteriors({"nuts": idatas["nuts"]}, reference="nuts"))
    assert "max_nested_r_hat" not in plain and "steps" not in plain


def test_hmc_has_its_own_sizes_unless_the_caller_sets_them():
    for quick in (False, True):
        sizes = hmc_settings(default_settings(quick=quick))
        mode = COMPARE_HMC_RUN["quick" if quick else "full"]
        assert (sizes.num_chains, sizes.num_warmup, sizes.num_samples) == (
            mode["num_chains"], mode["num_warmup"], mode["num_samples"])
    mine = default_settings(quick=True, num_samples=70, num_warmup=50)
    assert hmc_settings(mine) is mine
