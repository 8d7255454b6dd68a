"""The comparison's SVI convergence rule (issue 14): early stops, recorded steps, same table."""

import pyro
import pytest
from pyro.infer.autoguide import AutoNormal, init_to_median

from pyro_dgm.compare import compare_posteriors, default_settings, summarize
from pyro_dgm.compare.methods.fitting import converged, export_guide, fit_svi
from pyro_dgm.compare.registry import METHODS, MODELS


def test_converged_compares_the_means_of_the_last_two_windows():
    assert not converged([5.0] * 3, window=2, tol=0.1)  # fewer than 2 windows
    assert converged([10.0, 10.0, 10.5, 10.5], window=2, tol=0.05)  # 0.5 <= 0.05 * 10.5
    assert not converged([10.0, 10.0, 11.0, 11.0], window=2, tol=0.05)
    assert converged([0.0, 0.0, 0.5, 0.5], window=2, tol=0.5)  # magnitude floored at 1


def test_an_explicit_num_steps_runs_exactly_that_many_steps():
    settings = default_settings(num_steps=7, progress=False)
    problem = MODELS.get("fa-synthetic").build(settings)
    guide = pyro.infer.autoguide.AutoNormal(problem.model)
    assert len(fit_svi(problem, guide, settings, num_steps=30)) == 30
    with pytest.raises(ValueError, match="tol"):
        fit_svi(problem, guide, settings, tol=-1.0)


def test_stopping_early_keeps_the_table_within_monte_carlo_noise(monkeypatch):
    # fa-synthetic (300 x 6, 2 factors), mean-field ADVI; the rule with windows of 50 steps
    # and tolerance 3e-4 (so it fires within seconds; then one cool-down window) against the
    # whole cap of 400 steps.
    # The run from seed 0 that stops early takes the same steps as the full one until it
    # stops; the noise yardstick is a full run from seed 1: the optimizer's own noise
    # (Adam at this rate moves a location by up to 0.2-0.4 sd step to step) plus the
    # Monte Carlo error of 2,000 draws (sqrt(2 / 2000) = 0.03 sd).
    import pyro_dgm.compare.methods.fitting as fitting

    monkeypatch.setattr(fitting, "SVI_WINDOW", 50)
    monkeypatch.setattr(fitting, "SVI_TOLERANCE", 3e-4)
    settings = default_settings(num_steps=400, num_samples=2000, num_chains=1,
                                progress=False)
    problem = MODELS.get("fa-synthetic").build(settings)
    idatas = {}
    for name, seed, num_steps in (("full", 0, 400), ("early", 0, None), ("seed1", 1, 400)):
        pyro.set_rng_seed(seed)
        pyro.clear_param_store()
        guide = AutoNormal(problem.model, init_loc_fn=init_to_median, init_scale=0.05)
        steps = len(fit_svi(problem, guide, settings, num_steps=num_steps))
        idatas[name] = export_guide(problem, guide, settings, {"svi_steps": steps})
    steps = idatas["early"].posterior.attrs["svi_steps"]
    assert steps < 400 and steps % 50 == 0  # the rule stopped it at a window's end
    row = summarize(compare_posteriors(idatas, reference="full")).set_index("method")
    assert list(row["steps"]) == [400, steps, 400]
    early, noise = row.loc["early"], row.loc["seed1"]
    # the mean over the 23 elements is the stable figure; the max of one element is noisier
    assert early["mean_abs_std_error"] < 1.5 * noise["mean_abs_std_error"]
    assert early["max_abs_std_error"] < 2.0 * noise["max_abs_std_error"]
    assert abs(early["median_sd_ratio"] - 1) < 0.1


def test_the_vi_methods_record_their_steps():
    settings = default_settings(num_steps=20, num_samples=10, num_chains=1, progress=False)
    problem = MODELS.get("fa-synthetic").build(settings)
    for method in ("meanfield", "fullrank"):
        idata = METHODS.get(method).run(problem, settings)
        assert idata.posterior.attrs["svi_steps"] == 20  # the cap: under two windows
