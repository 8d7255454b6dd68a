"""The posteriordb loader: index parsing, typing, shapes, and (when a bundle is found) the
eight vendored posteriors against their Stan declarations."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pyro_dgm.data import posteriordb as pdb

ROOT = Path(__file__).resolve().parents[2]
NAMES = pdb.posteriordb_names()
needs_bundle = pytest.mark.skipif(
    not pdb.posteriordb_available(),
    reason="no posteriordb bundle found (build it with dev/vendor_posteriordb.py and set "
           f"{pdb.ENV_VAR}, or place it at shared/posteriordb)")


def _dev_script(name: str = "vendor_posteriordb"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "dev" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_vendor_script = _dev_script


@pytest.mark.parametrize("column, expected", [
    ("sigma", ("sigma", ())), ("beta[1]", ("beta", (0,))),
    ("theta[2,1]", ("theta", (1, 0))), ("z[10, 3]", ("z", (9, 2))),
])
def test_parse_stan_index(column, expected):
    assert pdb.parse_stan_index(column) == expected


@pytest.mark.parametrize("column", ["beta[0]", "beta[]", "beta[1", "b eta", "x[a]"])
def test_parse_stan_index_rejects(column):
    with pytest.raises(ValueError, match="column"):
        pdb.parse_stan_index(column)


def test_unknown_name_is_named():
    for load in (pdb.load_posteriordb_data, pdb.load_posteriordb_reference,
                 pdb.load_posteriordb_stan_code, pdb.posteriordb_parameters):
        with pytest.raises(ValueError, match="'eight_schools'"):
            load("eight_schools")


def test_vendor_places_draws_by_index_not_order():
    """Columns of a matrix parameter in column-major order (as Stan's CSV writes them),
    shuffled: each lands at its own index."""
    vendor = _vendor_script()
    rng = np.random.default_rng(0)
    values = {(i, j): rng.normal(size=30) for i in range(2) for j in range(3)}
    columns = [f"m[{i + 1},{j + 1}]" for j in range(3) for i in range(2)]
    rng.shuffle(columns)
    chain = {c: list(values[pdb.parse_stan_index(c)[1]]) for c in columns}
    chain["s"] = list(rng.normal(size=30))
    decls = vendor.declarations("parameters { matrix[R, 3] m; real<lower=0> s; }",
                                "parameters")
    out = vendor.grouped_reference([chain, chain], decls, {"R": np.int64(2)})
    assert out["m"].shape == (2, 3, 2, 3) and out["s"].shape == (2, 3)
    for (i, j), v in values.items():
        np.testing.assert_array_equal(out["m"][1, :, i, j], v[::vendor.THIN])


def test_vendor_declarations_and_types():
    vendor = _vendor_script()
    code = """data {
      int<lower=1> N; // size
      vector[N] y;  /* reals printed as integers in JSON */
      array[N] int k;
      array[2] vector[N] w;
      matrix<lower=0>[2, N] a;
    }
    transformed data { real c = 1; }
    parameters { simplex[N] t; positive_ordered[2] p; }"""
    decls = vendor.declarations(code, "data")
    assert [(d["name"], d["base"], d["dims"]) for d in decls] == [
        ("N", "int", []), ("y", "real", ["N"]), ("k", "int", ["N"]),
        ("w", "real", ["2", "N"]), ("a", "real", ["2", "N"])]
    raw = {"N": 3, "y": [1, 2, 3], "k": [1, 2, 3], "w": [[1, 2, 3]] * 2, "a": [[0] * 3] * 2}
    data = vendor.typed_data(raw, decls, "toy")
    assert data["y"].dtype == np.float64 and data["k"].dtype == np.int64
    with pytest.raises(ValueError, match="toy: data 'y'"):
        vendor.typed_data({**raw, "y": [1, 2]}, decls, "toy")
    with pytest.raises(ValueError, match="'k' has non-integers"):
        vendor.typed_data({**raw, "k": [1, 2.5, 3]}, decls, "toy")
    params = vendor.declarations(code, "parameters")
    assert [(d["stan_type"], d["dims"]) for d in params] == [("simplex", ["N"]),
                                                              ("positive_ordered", ["2"])]


def test_loader_on_a_written_bundle(tmp_path, monkeypatch):
    """The loader's typing and its errors, on a small bundle in the documented format."""
    name = "kidiq-kidscore_momiq"
    manifest = {"posteriors": {name: {
        "model": "kidscore_momiq", "has_reference": True,
        "data": [{"name": "N", "stan_type": "int", "base": "int", "dims": []},
                 {"name": "x", "stan_type": "vector", "base": "real", "dims": ["N"]}],
        "parameters": [{"name": "beta", "stan_type": "vector", "constraint": "",
                        "dims": ["2"]},
                       {"name": "sigma", "stan_type": "real", "constraint": "lower=0",
                        "dims": []}]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    np.savez_compressed(tmp_path / f"{name}.npz", **{
        "data.N": np.int64(3), "data.x": np.array([1, 2, 3]),
        "reference.beta": np.zeros((10, 100, 2)), "reference.sigma": np.ones((10, 100))})
    monkeypatch.setenv(pdb.ENV_VAR, str(tmp_path))
    assert pdb.posteriordb_dir() == tmp_path
    data = pdb.load_posteriordb_data(name)
    assert data["N"].dtype == np.int64 and data["N"].shape == ()
    assert data["x"].dtype == np.float64  # stored as integers, declared vector (real)
    assert pdb.posteriordb_parameters(name)["sigma"] == ("real", "lower=0", ())
    assert pdb.load_posteriordb_reference(name)["beta"].shape == (10, 100, 2)
    assert pdb.posteriordb_reference_source(name) is None  # no field: posteriordb's draws
    with pytest.raises(FileNotFoundError, match="kidscore_momiq.stan"):
        pdb.load_posteriordb_stan_code(name)
    with pytest.raises(ValueError, match="'nes2000-nes' is not in the bundle"):
        pdb.load_posteriordb_data("nes2000-nes")


def _small_bundle(path: Path, name: str) -> None:
    """A bundle entry without reference draws, as the vendor script writes one."""
    manifest = {"posteriors": {name: {
        "model": "kidscore_momiq", "has_reference": False, "reference_shape": None,
        "data": [{"name": "N", "stan_type": "int", "base": "int", "dims": []}],
        "parameters": [{"name": "beta", "stan_type": "vector", "constraint": "",
                        "dims": ["N"]},
                       {"name": "sigma", "stan_type": "real", "constraint": "lower=0",
                        "dims": []}]}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    np.savez_compressed(path / f"{name}.npz", **{"data.N": np.int64(2)})
    (path / "README.md").write_text("# posteriordb bundle\n")


def test_own_reference_is_stored_in_the_bundle_format(tmp_path, monkeypatch):
    """dev/reference_draws.py: 10 chains x 100 spread over the runs' chains, each thinned
    evenly; written next to the data, the manifest labelled (and backed up)."""
    import arviz as az

    script = _dev_script("reference_draws")
    name = "kidiq-kidscore_momiq"
    _small_bundle(tmp_path, name)
    monkeypatch.setenv(pdb.ENV_VAR, str(tmp_path))
    pdb._manifest.cache_clear()
    # two runs of 6 chains x 300 draws; each value encodes (run, chain, draw)
    runs = []
    for run in range(2):
        code = run * 10_000 + np.arange(6)[:, None] * 1_000 + np.arange(300)[None, :]
        runs.append(az.from_dict(posterior={
            "beta": np.stack([code, -code], -1).astype(float), "sigma": code + 1.0}))
    arrays = script.stored_draws(runs, ["beta", "sigma"])
    sigma = arrays["sigma"] - 1.0
    assert sigma.shape == (10, 100) and arrays["beta"].shape == (10, 100, 2)
    np.testing.assert_array_equal(arrays["beta"][..., 1], -arrays["beta"][..., 0])
    chains = sigma[:, 0] // 1_000  # run * 10 + chain
    np.testing.assert_array_equal(chains, [0, 1, 2, 4, 5, 10, 11, 12, 14, 15])
    np.testing.assert_array_equal(sigma[0] % 1_000, np.linspace(0, 299, 100).round())
    with pytest.raises(ValueError, match="samples"):
        script.stored_draws([runs[0].sel(draw=slice(0, 50))], ["beta", "sigma"])

    assert pdb.posteriordb_reference_source(name) is None
    script.write_reference(tmp_path, name, arrays, "ours, test")
    assert (tmp_path / "manifest.orig.json").is_file()
    assert not json.loads((tmp_path / "manifest.orig.json").read_text())[
        "posteriors"][name]["has_reference"]
    assert pdb.posteriordb_has_reference(name)
    assert pdb.posteriordb_reference_source(name) == "ours, test"
    np.testing.assert_array_equal(pdb.load_posteriordb_reference(name)["sigma"],
                                  arrays["sigma"])
    assert pdb.load_posteriordb_data(name)["N"] == 2  # the data kept
    script.write_reference(tmp_path, name, arrays, "ours, test")  # again: one README note
    assert (tmp_path / "README.md").read_text().count("NOT posteriordb's") == 1
    with pytest.raises(ValueError, match="'sigma' has shape"):
        script.write_reference(tmp_path, name, {**arrays, "sigma": arrays["sigma"][:5]}, "x")
    pdb._manifest.cache_clear()
    pdb._arrays.cache_clear()


@needs_bundle
@pytest.mark.parametrize("name", NAMES)
def test_bundle_data_follows_the_stan_declarations(name):
    entry = json.loads((pdb.posteriordb_dir() / "manifest.json").read_text())[
        "posteriors"][name]
    data = pdb.load_posteriordb_data(name)
    assert list(data) == [d["name"] for d in entry["data"]]  # every data-block variable
    for decl in entry["data"]:
        value = data[decl["name"]]
        assert value.dtype == (np.int64 if decl["stan_type"] == "int" else np.float64)
        assert value.ndim == len(decl["dims"])
    if name == "nes2000-nes":  # integers in JSON, `vector[N]` in Stan
        assert data["partyid7"].dtype == np.float64 and data["age_discrete"].dtype == np.int64


@needs_bundle
@pytest.mark.parametrize("name", NAMES)
def test_bundle_reference_follows_the_parameter_declarations(name):
    if not pdb.posteriordb_has_reference(name):
        pytest.skip(f"{name}: the bundle holds no reference draws")
    params = pdb.posteriordb_parameters(name)
    reference = pdb.load_posteriordb_reference(name)
    assert list(reference) == list(params)
    for param, (stan_type, constraint, shape) in params.items():
        draws = reference[param]
        assert draws.shape == (10, 100, *shape) and np.isfinite(draws).all()
        assert draws.std(axis=(0, 1)).min() > 0  # thinned draws, not one repeated value
        if constraint == "lower=0" or stan_type == "positive_ordered":
            assert (draws > 0).all()
        if stan_type == "simplex":
            np.testing.assert_allclose(draws.sum(-1), 1.0, atol=1e-6)
        if stan_type == "positive_ordered":
            assert (np.diff(draws, axis=-1) > 0).all()
