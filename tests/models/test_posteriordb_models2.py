"""posteriordb translations gp_regr, hmm_drive_0, accel_gp against independent numpy/scipy
implementations of their Stan log densities, at posteriordb's reference draws.

Data and draws are read straight from a posteriordb mirror (a bare git repository); the
tests skip where none is found.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median, init_to_uniform
from scipy import special, stats

from pyro_dgm.data.arrays import to_tensors
from pyro_dgm.models.posteriordb import posterior_model
from pyro_dgm.models.posteriordb.hmm_drive_0 import emission_log_prob, forward_log_likelihood
from pyro_dgm.models.posteriordb.improper import FlatPrior

MIRROR = Path(os.environ.get("POSTERIORDB_MIRROR", "/work/.mirror/stan-dev+posteriordb/repo"))
GP, HMM, ACCEL = "gp_pois_regr-gp_regr", "bball_drive_event_0-hmm_drive_0", "mcycle_gp-accel_gp"
NAMES = (GP, HMM, ACCEL)

pytestmark = pytest.mark.skipif(not MIRROR.is_dir(), reason="no posteriordb mirror")


def _show(path: str) -> bytes | None:
    out = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:posterior_database/{path}"],
                         capture_output=True, check=False)
    return out.stdout if out.returncode == 0 and out.stdout else None


def _unzip_json(path: str):
    raw = _show(path)
    if raw is None:
        return None
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return json.loads(z.read(z.namelist()[0]))


def _posterior(name: str) -> dict:
    return json.loads(_show(f"posteriors/{name}.json"))


def _data(name: str) -> dict:
    return {k: np.asarray(v) for k, v in
            _unzip_json(f"data/data/{_posterior(name)['data_name']}.json.zip").items()}


def _stack(columns: dict[str, list], dims: dict[str, int]) -> dict[str, np.ndarray]:
    """posteriordb's ``name[i]`` columns -> arrays ``(draws, *shape)`` (vectors only here)."""
    out = {}
    for par, size in dims.items():
        cols = [par] if par in columns else [f"{par}[{i}]" for i in range(1, size + 1)]
        a = np.stack([np.asarray(columns[c], float) for c in cols], axis=-1)
        out[par] = a[..., 0] if cols == [par] else a
    return out


def _points(name: str, num: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``num`` reference draws; for accel_gp (whose draws file is absent from the mirror)
    points mean + sd / 4 * N(0, 1) from posteriordb's summary statistics, kept positive
    (near the posterior: the zgp are correlated a posteriori, whole-sd independent moves
    reach log densities of -1e8)."""
    dims = _posterior(name)["dimensions"]
    rng = np.random.default_rng(seed)
    draws = _unzip_json(f"reference_posteriors/draws/draws/{name}.json.zip")
    if draws is not None:
        merged = {k: sum((chain[k] for chain in draws), []) for k in draws[0]}
        idx = rng.choice(len(next(iter(merged.values()))), num, replace=False)
        return {k: v[idx] for k, v in _stack(merged, dims).items()}
    stat = "reference_posteriors/summary_statistics"
    mean = json.loads(_show(f"{stat}/mean_value/mean_value/{name}.json"))
    msq = json.loads(_show(f"{stat}/mean_squared_value/mean_squared_value/{name}.json"))
    m, s = np.asarray(mean["mean_value"]), np.asarray(msq["mean_squared_value"])
    sd = np.sqrt(np.maximum(s - m**2, 0.0))
    cols = {n: m[i] + sd[i] / 4 * rng.standard_normal(num) for i, n in enumerate(mean["names"])}
    cols = {n: list(np.abs(c) if re.match(r"(sdgp|lscale)", n) else c) for n, c in cols.items()}
    return _stack(cols, dims)


def _log_joint(model, data: dict, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of every site's log density (batch shape of the values' leading dims)."""
    tr = poutine.trace(poutine.condition(model, values)).get_trace(**data)
    tr.compute_log_prob()
    return sum(site["log_prob"] for site in tr.nodes.values() if site["type"] == "sample")


# ---- independent implementations of the Stan model blocks (numpy/scipy, full constants) --

def _ref_gp_regr(d: dict, p: dict) -> float:
    x, y, n = d["x"].astype(float), d["y"], int(d["N"])
    cov = p["alpha"] ** 2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * p["rho"] ** 2))
    cov += np.diag(np.full(n, p["sigma"]))
    return (stats.gamma.logpdf(p["rho"], 25, scale=1 / 4) + stats.norm.logpdf(p["alpha"], 0, 2)
            + stats.norm.logpdf(p["sigma"], 0, 1)
            + stats.multivariate_normal.logpdf(y, np.zeros(n), cov))


def _hmm_emissions(d: dict, phi: np.ndarray, lam: np.ndarray) -> np.ndarray:
    u, v = d["u"][:, None], d["v"][:, None]
    return stats.expon.logpdf(u, scale=1 / phi) + stats.expon.logpdf(v, scale=1 / lam)


def _hmm_loop(log_theta: np.ndarray, emis: np.ndarray) -> float:
    """Stan's forward algorithm, loop for loop."""
    n, k = emis.shape
    gamma = emis[0].copy()
    for t in range(1, n):
        gamma = np.array([special.logsumexp([gamma[j] + log_theta[j, s] + emis[t, s]
                                             for j in range(k)]) for s in range(k)])
    return special.logsumexp(gamma)


def _ref_hmm(d: dict, p: dict) -> float:
    theta = np.stack([p["theta1"], p["theta2"]])
    lp = sum(stats.dirichlet.logpdf(theta[k], d["alpha"][k]) for k in range(2))
    for par in ("phi", "lambda"):
        lp += stats.norm.logpdf(p[par][0], 0, 1) + stats.norm.logpdf(p[par][1], 3, 1)
    return lp + _hmm_loop(np.log(theta), _hmm_emissions(d, p["phi"], p["lambda"]))


def _ref_accel(d: dict, p: dict) -> float:
    lp = 0.0
    predictors = []
    for sfx, loc, scale in (("", -13, 36), ("_sigma", 0, 10)):
        b, sd, ls, z = (p[f"Intercept{sfx}"], p[f"sdgp{sfx}_1"], p[f"lscale{sfx}_1"],
                        p[f"zgp{sfx}_1"])
        slam, x = d[f"slambda{sfx}_1"], d[f"Xgp{sfx}_1"]
        spd = sd**2 * (np.sqrt(2 * np.pi) * ls) ** slam.shape[1] \
            * np.exp(-0.5 * ls**2 * (slam**2).sum(1))
        predictors.append(b + x @ (np.sqrt(spd) * z))
        lp += (stats.t.logpdf(b, 3, loc, scale) + stats.t.logpdf(sd, 3, 0, 36)
               - stats.t.logsf(0, 3, 0, 36) + stats.norm.logpdf(z).sum()
               + stats.invgamma.logpdf(ls, 1.124909, scale=0.0177))
    mu, sigma = predictors[0], np.exp(predictors[1])
    return lp + stats.norm.logpdf(d["Y"], mu, sigma).sum()


#: reference implementation and the exact constant Pyro - reference (Stan's ``~`` on
#: ``real<lower=0>`` with a normal prior: Pyro's half-normal is the normal times 2)
REFERENCE = {GP: (_ref_gp_regr, 2 * np.log(2.0)), HMM: (_ref_hmm, 0.0), ACCEL: (_ref_accel, 0.0)}


@pytest.mark.parametrize("name", NAMES)
def test_log_joint_matches_stan_model_block(name):
    data = _data(name)
    points = _points(name, 5)
    model = posterior_model(name)
    values = {k: torch.as_tensor(v) for k, v in points.items()}
    lp = _log_joint(model, to_tensors(data), values).numpy()   # all five draws at once
    ref_fn, constant = REFERENCE[name]
    ref = np.array([ref_fn(data, {k: v[i] for k, v in points.items()}) for i in range(5)])
    assert np.all(np.isfinite(ref))
    np.testing.assert_allclose(lp - ref, constant, rtol=0, atol=1e-8)
    # one draw at a time (no batch dims) gives the same numbers
    one = _log_joint(model, to_tensors(data), {k: v[2] for k, v in values.items()})
    assert float(one) == pytest.approx(lp[2], abs=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_sites_shapes_dtype_and_batch(name, dtype):
    data = to_tensors(_data(name), dtype=dtype)
    model = posterior_model(name)
    points = _points(name, 3)
    values = {k: torch.as_tensor(v, dtype=dtype) for k, v in points.items()}
    tr = poutine.trace(poutine.condition(model, {k: v[0] for k, v in values.items()})) \
        .get_trace(**data)
    free = poutine.trace(model).get_trace(**data)   # latent names: sites not observed
    latent = {k: tr.nodes[k] for k, s in free.nodes.items() if s["type"] == "sample"
              and not s["is_observed"]}
    dims = _posterior(name)["dimensions"]
    assert set(latent) == set(dims)
    for k, site in latent.items():
        assert int(np.prod(site["value"].shape)) == dims[k]
        assert site["value"].shape == points[k].shape[1:]
    assert all(torch.isfinite(s["fn"].log_prob(s["value"])).all() and s["value"].dtype == dtype
               for s in tr.nodes.values() if s["type"] == "sample")
    # leading batch dims as a chain plate puts them: (S, 1, *shape)
    lp = _log_joint(model, data, {k: v[:, None] for k, v in values.items()})
    assert lp.shape == (3, 1) and lp.dtype == dtype and torch.isfinite(lp).all()


@pytest.mark.parametrize("batch", [(), (3,), (2, 1)])
def test_hmm_forward_pass_equals_the_loop(batch):
    data = to_tensors(_data(HMM))
    u, v = data["u"][:60], data["v"][:60]
    gen = torch.Generator().manual_seed(1)
    theta = torch.distributions.Dirichlet(torch.ones(2, dtype=torch.float64)) \
        .sample(batch + (2,))
    phi = torch.rand(batch + (2,), generator=gen, dtype=torch.float64).cumsum(-1) + 0.5
    lam = torch.rand(batch + (2,), generator=gen, dtype=torch.float64).cumsum(-1) * 0.1
    got = forward_log_likelihood(theta, phi, lam, u, v)
    assert got.shape == batch
    emis = emission_log_prob(phi, lam, u, v)
    assert emis.shape == batch + (60, 2)
    d = {"u": u.numpy(), "v": v.numpy()}
    for idx in np.ndindex(*batch):
        want = _hmm_loop(theta[idx].log().numpy(),
                         _hmm_emissions(d, phi[idx].numpy(), lam[idx].numpy()))
        assert float(got[idx]) == pytest.approx(want, abs=1e-10)
    # a single observation: no transition at all
    one = forward_log_likelihood(theta, phi, lam, u[:1], v[:1])
    torch.testing.assert_close(one, emis[..., 0, :].logsumexp(-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("support,shape", [(constraints.positive_ordered_vector, (2,)),
                                           (constraints.simplex, (3,)),
                                           (constraints.positive, ())])
def test_flat_prior_samples_starting_points(support, shape):
    d = FlatPrior(support, shape, like=torch.zeros(2, dtype=torch.float64))
    x = d.expand((4,)).sample((5,))
    assert x.shape == (5, 4) + shape and x.dtype == torch.float64
    assert bool(support.check(x).all())
    lp = d.log_prob(x)
    assert lp.shape == (5, 4) and lp.dtype == torch.float64 and bool((lp == 0).all())
    assert isinstance(d, pyro.distributions.ImproperUniform) and d.support is support


@pytest.mark.parametrize("init", [init_to_uniform, init_to_median])
def test_pyro_init_strategies_run_on_the_hmm(init):
    data = to_tensors(_data(HMM))
    tr = poutine.trace(InitMessenger(init)(posterior_model(HMM))).get_trace(**data)
    phi = tr.nodes["phi"]["value"]
    assert phi.dtype == torch.float64 and bool(phi[1] > phi[0] > 0)
    assert torch.isfinite(tr.log_prob_sum())


def test_bad_data_named():
    hmm = to_tensors(_data(HMM))
    with pytest.raises(ValueError, match="K: "):
        posterior_model(HMM)(**{**hmm, "K": 3})
    with pytest.raises(ValueError, match="v: "):
        posterior_model(HMM)(**{**hmm, "v": hmm["v"][:-1]})
    gp = to_tensors(_data(GP))
    with pytest.raises(ValueError, match="x: "):
        posterior_model(GP)(**{**gp, "N": 10})
    accel = to_tensors(_data(ACCEL))
    with pytest.raises(ValueError, match="Kgp_sigma_1: "):
        posterior_model(ACCEL)(**{**accel, "Kgp_sigma_1": 2})
    with pytest.raises(ValueError, match="slambda_1: "):
        posterior_model(ACCEL)(**{**accel, "slambda_1": accel["slambda_1"][:-1]})


def test_accel_gp_prior_only_drops_the_likelihood():
    data = to_tensors(_data(ACCEL))
    tr = poutine.trace(posterior_model(ACCEL)).get_trace(**{**data, "prior_only": 1})
    assert "Y" not in tr.nodes
