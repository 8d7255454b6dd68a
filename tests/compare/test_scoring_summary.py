"""Issue 20: scoring that can be skipped or chunked; the summary's worst element; a missing
``inference_kind``; derived quantities."""

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_dgm.compare._scoring as scoring
from pyro_dgm.compare import compare_posteriors, from_mcmc, summarize, to_inference_data
from pyro_dgm.compare._arviz import arviz, set_attrs
from pyro_dgm.inference.model_info import model_info

X = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = X @ torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64) + 0.3


def regression(x, y):
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
    beta = pyro.sample("beta", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
    pyro.deterministic("beta_norm", beta.norm(dim=-1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal((x * beta).sum(-1), sigma), obs=y)


class _Finished:
    """What ``from_mcmc`` reads of a finished ``pyro.infer.MCMC`` run."""

    def __init__(self, samples, model, args):
        self._samples, self._args, self._kwargs, self._diagnostics = samples, args, {}, []
        self.kernel = type("Kernel", (), {"model": staticmethod(model)})()

    def get_samples(self, group_by_chain=False):
        return self._samples


def _run(chains=3, draws=20):
    g = torch.Generator().manual_seed(1)
    samples = {"sigma": 0.3 + 0.05 * torch.rand(chains, draws, generator=g,
                                                dtype=torch.float64),
               "beta": torch.randn(chains, draws, 3, generator=g, dtype=torch.float64)}
    return _Finished(samples, regression, (X, Y))


def test_no_scoring_runs_no_model_over_the_draws(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("scored although nothing asked for it")

    monkeypatch.setattr("pyro_dgm.compare.export.score_draws", fail)
    idata = from_mcmc(_run(), log_likelihood=False, lp=False, deterministic=False)
    assert "log_likelihood" not in idata.groups() and "lp" not in idata.sample_stats
    assert idata.posterior["beta"].shape == (3, 20, 3)


def test_chunks_give_the_same_scores():
    run = _run()
    whole = from_mcmc(run, chunk_size=1000)
    for kwargs in ({"chunk_size": 7}, {"chunk_size": 1}, {"memory_mb": 0.05}):
        part = from_mcmc(run, **kwargs)
        for group, name in (("sample_stats", "lp"), ("log_likelihood", "y"),
                            ("posterior", "beta_norm")):
            np.testing.assert_allclose(part[group][name].values, whole[group][name].values,
                                       rtol=0, atol=1e-12)
    norm = np.linalg.norm(whole.posterior["beta"].values, axis=-1)
    np.testing.assert_allclose(whole.posterior["beta_norm"].values, norm, atol=1e-12)
    assert "beta_norm" not in whole.log_likelihood and "beta_norm" not in whole.observed_data


def test_chunk_size_from_memory_budget():
    info = model_info(regression, (X, Y))
    draws = {"beta": torch.zeros(1000, 3, dtype=torch.float64)}
    data_bytes = (X.numel() + 2 * Y.numel()) * 8  # arguments and the observed values
    assert scoring.chunk_draws(info, draws, (X, Y), memory_mb=1.0) == 2**20 // (
        4 * data_bytes + 3 * 8)
    assert scoring.chunk_draws(info, draws, (X, Y), memory_mb=1e-9) == 1
    with pytest.raises(ValueError, match="memory_mb"):
        scoring.chunk_draws(info, draws, (X, Y), memory_mb=0)
    with pytest.raises(ValueError, match="chunk_size"):
        from_mcmc(_run(), chunk_size=0)


def test_nonfinite_deterministic_is_reported():
    def model(x, y):
        regression(x, y)
        pyro.deterministic("ratio", pyro.get_param_store().get_param(
            "zero", torch.zeros((), dtype=torch.float64)) / 0.0)

    pyro.clear_param_store()
    info = model_info(model, (X, Y))
    posterior = {k: v for k, v in _run().get_samples().items()}
    with pytest.warns(RuntimeWarning, match="'ratio': non-finite at 20 of 20"):
        to_inference_data({k: v[:1] for k, v in posterior.items()}, info, model=model,
                          args=(X, Y))
    pyro.clear_param_store()


# -- the report --------------------------------------------------------------------------
def _idata(draws, kind="mcmc"):
    idata = arviz.from_dict(posterior=draws)
    if kind is not None:
        set_attrs(idata, {"inference_kind": kind})
    return idata


def _normal(shape, mean=0.0, seed=0):
    return mean + np.random.default_rng(seed).standard_normal(shape)


def test_summary_names_the_worst_parameter():
    ref = _idata({"a": _normal((2, 2000, 3), seed=1)})
    off = _normal((2, 2000, 3), seed=2)
    off[..., 1] += 0.5  # one element 0.5 sd off
    table = compare_posteriors({"ref": ref, "off": _idata({"a": off}, "vi")}, reference="ref")
    summary = summarize(table).set_index("method")
    assert summary.loc["off", "worst_parameter"] == "a[1]"
    assert summary.loc["off", "max_abs_std_error"] == pytest.approx(0.5, abs=0.1)
    assert summary.loc["off", "max_abs_std_error"] > 2 * summary.loc["off",
                                                                     "mean_abs_std_error"]
    assert summary.loc["ref", "max_abs_std_error"] == 0
    assert summary.loc["ref", "worst_parameter"] == ""
    nan_rows = pd.DataFrame({"method": ["m"], "kind": ["vi"], "parameter": ["c"],
                             "std_mean_error": [np.nan], "sd_ratio": [np.nan],
                             "w1_std": [np.nan], "r_hat": [np.nan], "ess_bulk": [np.nan],
                             "wall_time_s": [np.nan]})
    assert summarize(nan_rows)["worst_parameter"].tolist() == [""]


def test_missing_inference_kind_is_an_error():
    ref = _idata({"a": _normal((2, 100))})
    with pytest.raises(ValueError, match=r"idatas\['bare'\].*inference_kind"):
        compare_posteriors({"ref": ref, "bare": _idata({"a": _normal((2, 100))}, None)},
                           reference="ref")


def test_derived_quantity_for_a_reference_that_lacks_it():
    mu, tau, eta = _normal((2, 500), seed=3), np.exp(_normal((2, 500), seed=4)), _normal(
        (2, 500, 4), seed=5)
    theta = mu[..., None] + tau[..., None] * eta
    ref = _idata({"mu": mu, "tau": tau, "eta": eta})
    with_theta = _idata({"mu": mu, "tau": tau, "eta": eta, "theta": theta}, "vi")
    calls = []

    def theta_fn(post):
        calls.append(1)
        return post["mu"] + post["tau"] * post["eta"]

    table = compare_posteriors({"ref": ref, "vi": with_theta}, reference="ref",
                               derived={"theta": theta_fn})
    assert len(calls) == 1  # only for the posterior that lacks it
    rows = table[table.parameter.str.startswith("theta")]
    assert len(rows) == 8 and np.allclose(rows["std_mean_error"], 0, atol=1e-12)
    assert np.isfinite(rows[rows.method == "ref"]["r_hat"]).all()
    with pytest.raises(ValueError, match=r"derived\['bad'\]"):
        compare_posteriors({"ref": ref}, reference="ref", derived={"bad": lambda p: 1.0})
    with pytest.raises(ValueError, match=r"derived\['nan'\].*non-finite"):
        compare_posteriors({"ref": ref}, reference="ref",
                           derived={"nan": lambda p: p["mu"] * np.nan})


def test_a_model_that_broadcasts_wrongly_is_scored_draw_by_draw():
    """``beta.unsqueeze(-2)`` puts the draws of ``beta`` one dim too far left: under a plate
    of draws the likelihood pairs every draw's mean with every draw's scale. The scores must
    still be each draw's own (the per-draw loop), not a silent mix."""
    def skewed(x, y):
        sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
        beta = pyro.sample("beta", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal((x * beta.unsqueeze(-2)).sum(-1), sigma), obs=y)

    run = _run()
    right = from_mcmc(run)
    run.kernel.model = skewed
    np.testing.assert_allclose(from_mcmc(run, chunk_size=5).sample_stats["lp"].values,
                               right.sample_stats["lp"].values, rtol=1e-12)
