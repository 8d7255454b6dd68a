"""The posteriordb translations arma11, logearn_interaction_z, kidscore_momiq,
logmesquite_logvas and nes, each against a hand-written numpy/scipy log density of its Stan
model at posteriordb's reference draws (up to one constant), plus sites, shapes, dtypes,
batching and bad input. The Stan-computed fixtures are checked in
``test_posteriordb_translations.py``."""

from __future__ import annotations

import functools
import math

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import site_is_subsample
from scipy import stats

from pyro_dgm.data import posteriordb as pdb
from pyro_dgm.data.arrays import to_tensors
from pyro_dgm.models.posteriordb import posterior_model
from pyro_dgm.models.posteriordb.arma11 import ARMA11, arma11, arma11_errors, arma11_series

DRAWS = 5  # reference draws per posterior (first chain, evenly spaced)


@functools.cache
def _load(posterior: str):
    """(Stan-typed data, {parameter: array (DRAWS, *shape)}) of a posterior."""
    if not pdb.posteriordb_available():
        pytest.skip("no posteriordb bundle found (see docs/posteriordb.md)")
    data = pdb.load_posteriordb_data(posterior)
    chain = {k: v[0] for k, v in pdb.load_posteriordb_reference(posterior).items()}
    rows = np.linspace(0, len(next(iter(chain.values()))) - 1, DRAWS).astype(int)
    return data, {k: v[rows] for k, v in chain.items()}


def _np_arma(d, p):
    y = np.asarray(d["y"], float)
    mu, phi, theta, sigma = p["mu"], p["phi"], p["theta"], p["sigma"]
    err = np.zeros_like(y)
    err[0] = y[0] - (mu + phi * mu)
    for t in range(1, len(y)):
        err[t] = y[t] - (mu + phi * y[t - 1] + theta * err[t - 1])
    return (stats.norm.logpdf(mu, 0, 10) + stats.norm.logpdf(phi, 0, 2)
            + stats.norm.logpdf(theta, 0, 2) + stats.cauchy.logpdf(sigma, 0, 2.5)
            + stats.norm.logpdf(err, 0, sigma).sum())


def _np_earnings(d, p):
    h = np.asarray(d["height"], float)
    male = np.asarray(d["male"], float)
    z = (h - h.mean()) / h.std(ddof=1)
    b = p["beta"]
    loc = b[0] + b[1] * z + b[2] * male + b[3] * z * male
    return stats.norm.logpdf(np.log(np.asarray(d["earn"], float)), loc, p["sigma"]).sum()


def _np_kidiq(d, p):
    b = p["beta"]
    loc = b[0] + b[1] * np.asarray(d["mom_iq"], float)
    return (stats.cauchy.logpdf(p["sigma"], 0, 2.5)
            + stats.norm.logpdf(np.asarray(d["kid_score"], float), loc, p["sigma"]).sum())


def _np_mesquite(d, p):
    a = {k: np.asarray(v, float) for k, v in d.items() if k != "N"}
    b = p["beta"]
    loc = (b[0] + b[1] * np.log(a["diam1"] * a["diam2"] * a["canopy_height"])
           + b[2] * np.log(a["diam1"] * a["diam2"]) + b[3] * np.log(a["diam1"] / a["diam2"])
           + b[4] * np.log(a["total_height"]) + b[5] * np.log(a["density"])
           + b[6] * a["group"])
    return stats.norm.logpdf(np.log(a["weight"]), loc, p["sigma"]).sum()


def _np_nes(d, p):
    a = {k: np.asarray(v, float) for k, v in d.items() if k != "N"}
    b = p["beta"]
    age = np.asarray(d["age_discrete"])
    loc = (b[0] + b[1] * a["real_ideo"] + b[2] * a["race_adj"] + b[3] * (age == 2)
           + b[4] * (age == 3) + b[5] * (age == 4) + b[6] * a["educ1"] + b[7] * a["gender"]
           + b[8] * a["income"])
    return stats.norm.logpdf(a["partyid7"], loc, p["sigma"]).sum()


CASES = {
    # posterior: (parameter shapes, observed site, numpy log density)
    "arma-arma11": ({"mu": (), "phi": (), "theta": (), "sigma": ()}, "y", _np_arma),
    "earnings-logearn_interaction_z": ({"beta": (4,), "sigma": ()}, "log_earn",
                                       _np_earnings),
    "kidiq-kidscore_momiq": ({"beta": (2,), "sigma": ()}, "kid_score", _np_kidiq),
    "mesquite-logmesquite_logvas": ({"beta": (7,), "sigma": ()}, "log_weight", _np_mesquite),
    "nes2000-nes": ({"beta": (9,), "sigma": ()}, "partyid7", _np_nes),
}


def _batched_trace(model, data, draws, dtype):
    """One trace at all draws: each parameter of shape (DRAWS, 1, *event)."""
    values = {k: torch.as_tensor(v, dtype=dtype).reshape((DRAWS, 1) + v.shape[1:])
              for k, v in draws.items()}
    with pyro.plate("draws", DRAWS, dim=-2):
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(
            **to_tensors(data, dtype=dtype))
    trace.compute_log_prob()
    return trace


def _log_joint(trace) -> torch.Tensor:
    return sum(site["log_prob"].reshape(DRAWS, -1).sum(-1) for site in trace.nodes.values()
               if site["type"] == "sample" and not site_is_subsample(site))


@pytest.mark.parametrize("posterior", sorted(CASES))
def test_sites_and_log_density_match_numpy(posterior):
    shapes, observed, numpy_lp = CASES[posterior]
    data, draws = _load(posterior)
    assert {k: v.shape[1:] for k, v in draws.items()} == shapes  # reference draws' layout
    model = posterior_model(posterior)
    trace = _batched_trace(model, data, draws, torch.float64)
    sites = {name: site for name, site in trace.nodes.items()
             if site["type"] == "sample" and not site_is_subsample(site)}
    assert set(sites) == set(shapes) | {observed}  # the parameters and one observed site
    for name, shape in shapes.items():  # (draws, plate dim, *Stan's shape)
        assert sites[name]["value"].shape == (DRAWS, 1, *shape), name
        assert sites[name]["fn"].event_shape == shape, name
    assert sites[observed]["log_prob"].shape == (DRAWS, sites[observed]["value"].shape[-1])
    pyro_lp = _log_joint(trace).numpy()
    ref = np.array([numpy_lp(data, {k: v[i] for k, v in draws.items()}) for i in range(DRAWS)])
    diff = pyro_lp - ref
    assert np.all(np.isfinite(diff))
    assert np.ptp(diff) < 1e-8 * max(1.0, np.abs(ref).max() / 1e3), (pyro_lp, ref)


@pytest.mark.parametrize("posterior", sorted(CASES))
def test_float32_runs_and_agrees(posterior):
    data, draws = _load(posterior)
    model = posterior_model(posterior)
    lp64 = _log_joint(_batched_trace(model, data, draws, torch.float64))
    trace = _batched_trace(model, data, draws, torch.float32)
    for site in trace.nodes.values():
        if site["type"] == "sample":
            assert site["value"].dtype in (torch.float32, torch.long), site["name"]
            assert site["log_prob"].dtype == torch.float32, site["name"]
    lp32 = _log_joint(trace).double()
    torch.testing.assert_close(lp32, lp64, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("posterior", sorted(CASES))
def test_unbatched_trace_equals_batched(posterior):
    data, draws = _load(posterior)
    model = posterior_model(posterior)
    batched = _log_joint(_batched_trace(model, data, draws, torch.float64))
    values = {k: torch.as_tensor(v[1], dtype=torch.float64) for k, v in draws.items()}
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(
        **to_tensors(data, dtype=torch.float64))
    torch.testing.assert_close(trace.log_prob_sum(), batched[1], rtol=1e-13, atol=1e-10)


def test_float_data_equal_integer_data():
    """posteriordb's JSON stores nes2000's columns as integers (a file read by
    ``to_tensors`` gives ``long`` tensors); they score as the Stan-typed float columns do."""
    data, draws = _load("nes2000-nes")
    as_int = {k: (v.astype(np.int64) if v.dtype.kind == "f" and np.all(v == np.round(v))
                  else v) for k, v in data.items()}
    assert as_int["partyid7"].dtype == np.int64 and as_int["race_adj"].dtype == np.float64
    model = posterior_model("nes2000-nes")
    torch.testing.assert_close(_log_joint(_batched_trace(model, as_int, draws, torch.float64)),
                               _log_joint(_batched_trace(model, data, draws, torch.float64)),
                               rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("theta", [0.4, -0.9, 1.7, -3.0])
def test_arma_errors_equal_the_loop(theta):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(200, generator=gen, dtype=torch.float64)
    mu = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)  # a batch of two, (2, 1)
    phi = torch.tensor(0.6, dtype=torch.float64)
    err = arma11_errors(y, mu, phi, torch.tensor(theta, dtype=torch.float64))
    assert err.shape == (2, 200)
    for row, m in enumerate(mu[:, 0].tolist()):
        loop = torch.empty_like(y)
        loop[0] = y[0] - (m + 0.6 * m)
        for t in range(1, 200):
            loop[t] = y[t] - (m + 0.6 * y[t - 1] + theta * loop[t - 1])
        scale = loop.abs().clamp(min=1.0)  # |theta| > 1: the errors grow like |theta|^t
        assert ((err[row] - loop).abs() / scale).max() < 1e-12


def test_arma_errors_single_observation():
    y = torch.tensor([2.0], dtype=torch.float64)
    err = arma11_errors(y, *(torch.tensor(v, dtype=torch.float64) for v in (0.5, 0.2, 3.0)))
    torch.testing.assert_close(err, torch.tensor([2.0 - 0.5 - 0.2 * 0.5], dtype=torch.float64))


@pytest.mark.parametrize("kwargs, match", [
    ({"T": 3, "y": torch.zeros(4)}, "^y: expected shape"),
    ({"T": 0, "y": torch.zeros(0)}, "^T must be >= 1"),
    ({"T": 2.5, "y": torch.zeros(2)}, "^T must be an integer"),
])
def test_arma_bad_data(kwargs, match):
    with pytest.raises(ValueError, match=match):
        poutine.trace(arma11).get_trace(**kwargs)


def test_bad_data_named():
    earnings = posterior_model("earnings-logearn_interaction_z")
    values = {"beta": torch.zeros(4), "sigma": torch.tensor(1.0)}
    data = {"N": 2, "earn": torch.tensor([1.0, 0.0]), "height": torch.tensor([60.0, 70.0]),
            "male": torch.tensor([0.0, 1.0])}
    with pytest.raises(ValueError, match="^earn: expected positive"):
        poutine.condition(earnings, data=values)(**data)
    with pytest.raises(ValueError, match="^height: all values equal"):
        poutine.condition(earnings, data=values)(
            **{**data, "earn": torch.ones(2), "height": torch.ones(2)})
    nes = posterior_model("nes2000-nes")
    values = {"beta": torch.zeros(9), "sigma": torch.tensor(1.0)}
    data = {k: torch.ones(2) for k in ("partyid7", "real_ideo", "race_adj", "educ1", "gender",
                                       "income")}
    with pytest.raises(ValueError, match="^age_discrete: expected integers"):
        poutine.condition(nes, data=values)(N=2, age_discrete=torch.tensor([1.5, 2.0]), **data)
    kid = posterior_model("kidiq-kidscore_momiq")
    with pytest.raises(ValueError, match=r"^mom_iq: Stan declares it in \[0, 200\]"):
        poutine.condition(kid, data={"beta": torch.zeros(2), "sigma": torch.tensor(1.0)})(
            N=2, kid_score=torch.ones(2), mom_iq=torch.tensor([100.0, 250.0]))


def test_arma_series_inverts_errors_and_samples():
    """arma11_series inverts arma11_errors (|theta| < 1: no growth of rounding errors);
    ARMA11.sample draws errors N(0, sigma) (checked through the errors of the sampled
    series) for a batch of parameters."""
    f64 = {"dtype": torch.float64}
    mu, phi = torch.tensor([[0.5], [-2.0]], **f64), torch.tensor([[0.9], [-0.3]], **f64)
    theta, sigma = torch.tensor([[0.8], [-0.4]], **f64), torch.tensor([[0.1], [3.0]], **f64)
    err = torch.randn(2, 50, generator=torch.Generator().manual_seed(1), **f64)
    series = arma11_series(err, mu, phi, theta)
    torch.testing.assert_close(arma11_errors(series, mu, phi, theta), err, rtol=0, atol=1e-10)
    pyro.set_rng_seed(0)
    d = ARMA11(mu, phi, theta, sigma, 400)
    y = d.sample((3,))
    assert y.shape == (3, 2, 400) and d.batch_shape == (2, 400)
    z = arma11_errors(y, mu, phi, theta) / sigma  # iid N(0, 1) if sampled right
    assert abs(z.mean()) < 4 / (z.numel() ** 0.5) and abs(z.var() - 1) < 4 * (2 / z.numel())**0.5
    torch.testing.assert_close(d.log_prob(y).sum(-1),
                               torch.distributions.Normal(0, sigma).log_prob(z * sigma).sum(-1))
    assert d.expand((5, 2, 400)).log_prob(y[0]).shape == (5, 2, 400)


@pytest.mark.parametrize("posterior", sorted(CASES))
def test_unconditioned_trace_follows_the_data_dtype(posterior, dtype):
    """With Stan-typed data (reals as floats), a trace at prior draws / flat-prior starting
    points runs, in the data's dtype."""
    data, _ = _load(posterior)
    pyro.set_rng_seed(0)
    trace = poutine.trace(posterior_model(posterior)).get_trace(
        **to_tensors(data, dtype=dtype))
    trace.compute_log_prob()
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            assert site["value"].dtype == dtype and site["log_prob"].dtype == dtype, name
            assert torch.isfinite(site["log_prob"]).all() or name == CASES[posterior][1], name


def test_arma_overflow_gives_minus_infinity():
    """Far out in theta the errors overflow (float32 from |theta| ~ 1.6): log density -inf,
    no NaN and no validation error."""
    y = torch.linspace(-1, 1, 200)
    one = torch.ones(())
    d = ARMA11(0 * one, 0.5 * one, 3.0 * one, one, 200)
    lp = d.log_prob(y)
    assert not lp.isnan().any() and lp.sum() == -math.inf
