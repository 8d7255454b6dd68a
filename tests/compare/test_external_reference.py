"""Reference draws from elsewhere (issue 15, item 2).

``compare_posteriors(idatas, reference=InferenceData)`` gives the draws their own row
("reference", kind "reference", R-hat/ESS when they have chains); ``run_comparison`` uses a
problem's own draws (``Problem.reference``) as the reference unless told otherwise, so no
reference method need run, and the report and the NetCDF attributes say where they came
from. Checked against the exact posterior of a conjugate Normal model.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_dgm.compare import compare_posteriors, run_comparison, summarize
from pyro_dgm.compare._arviz import arviz, set_attrs
from pyro_dgm.compare.registry import ModelEntry
from pyro_dgm.compare.report import REFERENCE_ROW
from pyro_dgm.compare.settings import Problem, default_settings

SOURCE = "exact conjugate posterior N(sum y / (n + 1), 1 / (n + 1)), 4 x 1000 draws"


def _idata(draws: dict, kind: str | None = None):
    idata = arviz.from_dict(posterior=draws)
    if kind is not None:
        set_attrs(idata, {"inference_kind": kind, "wall_time_s": 1.0})
    return idata


# -- compare_posteriors -------------------------------------------------------------------------
@pytest.fixture
def draws():
    rng = np.random.default_rng(1)
    exact = {"theta": rng.standard_normal((4, 4000, 2))}
    shifted = {"theta": 0.5 + 2.0 * rng.standard_normal((1, 16000, 2))}
    return exact, shifted


def test_reference_draws_get_their_own_row(draws):
    exact, shifted = draws
    reference = _idata(exact)  # no inference_kind needed
    table = compare_posteriors({"vi": _idata(shifted, "vi")}, reference=reference)
    assert list(table["method"].unique()) == [REFERENCE_ROW, "vi"]
    ref = table[table.method == REFERENCE_ROW]
    assert set(ref["kind"]) == {"reference"}
    assert np.allclose(ref["std_mean_error"], 0) and np.allclose(ref["sd_ratio"], 1)
    # four chains of independent draws: R-hat ~ 1, bulk ESS ~ 16000
    assert ref["r_hat"].between(0.99, 1.01).all() and (ref["ess_bulk"] > 12000).all()
    assert ref["khat"].isna().all() and ref["wall_time_s"].isna().all()
    vi = table[table.method == "vi"]
    assert np.allclose(vi["std_mean_error"], 0.5, atol=4 * math.sqrt(5 / 16000))
    assert np.allclose(vi["sd_ratio"], 2.0, atol=0.05)
    # the same numbers as with the draws passed as a method and named as the reference
    named = compare_posteriors({"exact": _idata(exact, "mcmc"), "vi": _idata(shifted, "vi")},
                               reference="exact")
    np.testing.assert_allclose(vi["std_mean_error"], named[named.method == "vi"]
                               ["std_mean_error"])
    assert list(summarize(table)["method"]) == [REFERENCE_ROW, "vi"]


def test_one_chain_reference_has_no_rhat(draws):
    exact, shifted = draws
    one = _idata({"theta": exact["theta"][:1]})
    table = compare_posteriors({"vi": _idata(shifted, "vi")}, reference=one)
    assert table.loc[table.method == REFERENCE_ROW, "r_hat"].isna().all()


def test_reference_errors(draws):
    exact, shifted = draws
    idatas = {REFERENCE_ROW: _idata(shifted, "vi")}
    with pytest.raises(ValueError, match="a method is named 'reference'"):
        compare_posteriors(idatas, reference=_idata(exact))
    with pytest.raises(ValueError, match="reference: must be a method name.*got dict"):
        compare_posteriors({"vi": _idata(shifted, "vi")}, reference=exact)
    wrong = _idata({"theta": np.zeros((2, 10, 3))})
    with pytest.raises(ValueError, match="shape differs"):
        compare_posteriors({"vi": _idata(shifted, "vi")}, reference=wrong)
    with pytest.raises(ValueError, match="not in the posterior of method 'reference'"):
        compare_posteriors({"vi": _idata(shifted, "vi")}, reference=_idata(
            {"other": np.zeros((2, 10))}), var_names=["theta"])


# -- run_comparison with a problem that brings its reference ------------------------------------
N = 10


def normal_mean(y):
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", y.shape[-2]):
        pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def _entry(with_reference: bool = True) -> ModelEntry:
    y = torch.as_tensor(np.random.default_rng(3).normal(1.0, 1.0, size=(N, 2)))
    loc, sd = y.sum(0).numpy() / (N + 1), 1.0 / math.sqrt(N + 1)
    rng = np.random.default_rng(4)
    exact = _idata({"mu": loc + sd * rng.standard_normal((4, 1000, 2))})

    def build(settings):
        return Problem("normal-mean", normal_mean, (y.to(settings.dtype),),
                       description="Normal mean, conjugate",
                       reference=exact if with_reference else None,
                       reference_source=SOURCE if with_reference else "")

    return ModelEntry("normal-mean", build)


SETTINGS = dict(num_samples=300, num_warmup=200, num_chains=2, num_steps=300, progress=False,
                threads=1)


@pytest.mark.slow
def test_problem_reference_is_the_default(tmp_path):
    settings = default_settings(**SETTINGS)
    result = run_comparison(_entry(), ["nuts", "meanfield"], out=tmp_path / "r",
                            settings=settings, log=None)
    assert result.reference == REFERENCE_ROW and result.reference_source == SOURCE
    table = result.table
    assert list(table["method"].unique()) == [REFERENCE_ROW, "nuts", "meanfield"]
    # NUTS against the exact draws: Monte Carlo error of both, in reference sds
    nuts = table[table.method == "nuts"]
    ess = nuts["ess_bulk"].to_numpy()
    assert (ess > 100).all()
    assert (nuts["std_mean_error"].abs() < 4 * np.sqrt(1 / ess + 1 / 4000)).all()
    assert (np.abs(nuts["sd_ratio"] - 1) < 4 * np.sqrt(1 / (2 * ess) + 1 / 8000)).all()
    # mean-field is exact for this posterior (independent Gaussians); its fit is noisy
    meanfield = table[table.method == "meanfield"]
    assert (meanfield["std_mean_error"].abs() < 0.3).all()
    assert meanfield["sd_ratio"].between(0.75, 1.3).all()
    out = result.out
    assert (out / "reference.nc").exists() and (out / "nuts.nc").exists()
    index = (out / "index.md").read_text()
    assert SOURCE in index and "not run here" in index
    saved = arviz.from_netcdf(str(out / "nuts.nc")).posterior.attrs
    assert saved["reference"] == REFERENCE_ROW and saved["reference_source"] == SOURCE
    saved = arviz.from_netcdf(str(out / "reference.nc")).posterior.attrs
    assert saved["inference_kind"] == "reference" and saved["reference_source"] == SOURCE
    assert "| reference | reference |" in (out / "summary.md").read_text()


def test_a_named_method_overrides_the_problem_reference():
    settings = default_settings(**SETTINGS)
    result = run_comparison(_entry(), ["meanfield", "fullrank"], reference="fullrank",
                            settings=settings, log=None)
    assert result.reference == "fullrank" and REFERENCE_ROW not in result.idatas
    assert list(result.table["method"].unique()) == ["meanfield", "fullrank"]


def test_reference_draws_given_to_run_comparison():
    settings = default_settings(**SETTINGS)
    given = _entry().build(settings).reference
    given.posterior.attrs["reference_source"] = "my draws"
    result = run_comparison(_entry(False), ["meanfield"], reference=given, settings=settings,
                            log=None)
    assert result.reference_source == "my draws"
    assert list(result.table["method"].unique()) == [REFERENCE_ROW, "meanfield"]
    assert "reference" not in given.posterior.attrs  # the caller's draws are not modified


def test_without_problem_reference_the_default_method_must_run():
    settings = default_settings(**SETTINGS)
    with pytest.raises(ValueError, match="reference 'nuts' must be one of the methods.*has no "
                       "reference draws"):
        run_comparison(_entry(False), ["meanfield"], settings=settings, log=None)
