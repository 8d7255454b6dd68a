import math

import numpy as np
import pytest
from scipy.stats import norm

from pyro_dgm.compare import compare_posteriors, plot_posteriors, plot_sd_ratios, summarize
from pyro_dgm.compare._arviz import arviz, set_attrs


def _idata(draws: dict, kind: str, wall: float = 1.0):
    idata = arviz.from_dict(posterior=draws)
    set_attrs(idata, {"inference_kind": kind, "wall_time_s": wall})
    return idata


@pytest.fixture
def idatas():
    rng = np.random.default_rng(0)
    ref = {"theta": rng.standard_normal((4, 4000, 2)), "s": rng.standard_normal((4, 4000))}
    shifted = {"theta": 0.5 + 2.0 * rng.standard_normal((1, 16000, 2)),
               "s": rng.standard_normal((1, 16000))}
    return {"ref": _idata(ref, "mcmc", 3.0), "vi": _idata(shifted, "vi", 0.5)}


def test_compare_posteriors_against_known_distributions(idatas):
    table = compare_posteriors(idatas, reference="ref")
    assert set(table["method"]) == {"ref", "vi"}
    assert sorted(table["parameter"].unique()) == ["s", "theta[0]", "theta[1]"]
    vi = table[(table.method == "vi") & (table.parameter.str.startswith("theta"))]
    # Monte Carlo error of the mean difference: sqrt(1/16000 + 4/16000) ~ 0.018
    assert np.allclose(vi["std_mean_error"], 0.5, atol=4 * math.sqrt(5 / 16000))
    assert np.allclose(vi["sd_ratio"], 2.0, atol=0.05)
    # W1 between N(0,1) and N(0.5, 2^2) = E|0.5 + Z|, Z ~ N(0, 1)
    w1 = 0.5 * (2 * norm.cdf(0.5) - 1) + 2 * norm.pdf(0.5)
    assert np.allclose(vi["w1_std"], w1, atol=0.05)
    ref = table[table.method == "ref"]
    assert np.allclose(ref["std_mean_error"], 0) and np.allclose(ref["sd_ratio"], 1)
    assert ref["r_hat"].between(0.99, 1.01).all() and (ref["ess_bulk"] > 10000).all()
    assert vi["r_hat"].isna().all()  # no R-hat for VI draws
    assert set(table.loc[table.method == "vi", "wall_time_s"]) == {0.5}


def test_summary_has_one_row_per_method(idatas):
    summary = summarize(compare_posteriors(idatas, reference="ref"))
    assert list(summary["method"]) == ["ref", "vi"]
    assert summary.loc[1, "max_sd_ratio"] > 1.9


def test_compare_bad_input(idatas):
    with pytest.raises(ValueError, match="reference"):
        compare_posteriors(idatas, reference="nope")
    with pytest.raises(ValueError, match="var_names"):
        compare_posteriors(idatas, reference="ref", var_names=["missing"])


@pytest.mark.parametrize("kind", ["forest", "density"])
def test_plots_return_figures(idatas, kind):
    import matplotlib.pyplot as plt

    fig = plot_posteriors(idatas, var_names=["theta"], kind=kind)
    assert fig.axes
    plt.close(fig)
    fig = plot_sd_ratios(compare_posteriors(idatas, reference="ref"), reference="ref")
    assert fig.axes
    plt.close(fig)


def test_plot_bad_kind(idatas):
    with pytest.raises(ValueError, match="kind"):
        plot_posteriors(idatas, kind="violin")


def test_stuck_chain_gives_infinite_r_hat_without_warnings():
    stuck = {"a": np.concatenate([np.zeros((1, 50)), np.ones((1, 50))])}
    idatas = {"ref": _idata(stuck, "mcmc")}
    table = compare_posteriors(idatas, reference="ref")
    assert not np.isfinite(table["r_hat"]).all()
