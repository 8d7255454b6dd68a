"""A model function of the user's, from a file, with a data file (issue 15, item 1):
``file_model("PATH.py:FUNCTION", data)`` -> a comparison model whose Problem calls the function
with the data as keyword arguments (integer arrays as torch.long, integer scalars as int)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pyro import poutine
from scipy import stats

from pyro_dgm.compare.problems.user import file_model, load_model_function, model_entry
from pyro_dgm.compare.settings import default_settings

DATA = Path(__file__).resolve().parents[1] / "data"
LINREG = f"{DATA / 'linreg.py'}:model"
NPZ = DATA / "linreg.npz"


def _write(tmp_path, text: str, name: str = "user.py") -> Path:
    path = tmp_path / name
    path.write_text("import torch\nimport pyro\nimport pyro.distributions as dist\n\n" + text)
    return path


def test_shipped_data_is_what_the_script_writes():
    simulate = load_model_function(f"{DATA / 'linreg.py'}:simulate")
    stored = np.load(NPZ)
    fresh = simulate()
    assert sorted(stored.files) == sorted(fresh)
    for name, value in fresh.items():
        np.testing.assert_array_equal(stored[name], value)
        assert stored[name].dtype == value.dtype


def test_problem_calls_the_function_with_the_data(dtype):
    problem = file_model(LINREG, NPZ).build(default_settings(dtype=dtype))
    kwargs = problem.kwargs
    assert kwargs["g"].dtype == torch.long and kwargs["G"] == 3 and type(kwargs["G"]) is int
    assert kwargs["x"].dtype == dtype and kwargs["y"].dtype == dtype
    assert problem.var_names == ["alpha", "beta", "sigma"]
    assert problem.vectorizable and problem.max_plate_nesting == 1 and not problem.jit_compile
    assert problem.name == "linreg.py:model" and "g int[24]" in problem.description
    # the log joint at a point equals the closed form with the data of the file
    data = np.load(NPZ)
    alpha, beta, sigma = np.array([-0.5, 0.2, 1.1]), 0.6, 0.8
    point = {"alpha": torch.tensor(alpha, dtype=dtype), "beta": torch.tensor(beta, dtype=dtype),
             "sigma": torch.tensor(sigma, dtype=dtype)}
    trace = poutine.trace(poutine.condition(problem.model, point)).get_trace(**kwargs)
    mean = alpha[data["g"]] + beta * data["x"]
    expected = (stats.norm.logpdf(alpha).sum() + stats.norm.logpdf(beta)
                + stats.halfnorm.logpdf(sigma) + stats.norm.logpdf(data["y"], mean, sigma).sum())
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert trace.log_prob_sum().item() == pytest.approx(expected, rel=tol)


def test_a_model_that_does_not_broadcast_runs_one_particle_at_a_time(tmp_path):
    path = _write(tmp_path, "def model(x):\n"
                  "    mu = pyro.sample('mu', dist.Normal(x.new_zeros(()), 1.0))\n"
                  "    with pyro.plate('data', len(x)):\n"
                  "        pyro.sample('x', dist.Normal(mu.reshape(-1)[0], 1.0), obs=x)\n")
    data = tmp_path / "d.json"
    data.write_text('{"x": [0.1, 0.4, -0.2]}')
    problem = file_model(f"{path}:model", data).build(default_settings())
    assert not problem.vectorizable and problem.var_names == ["mu"]


def test_no_data_kwargs_and_discrete_sites(tmp_path):
    path = _write(tmp_path, "def prior():\n"
                  "    pyro.sample('z', dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0)"
                  ".to_event(1))\n\n"
                  "def anything(**data):\n"
                  "    p = pyro.sample('p', dist.Beta(torch.tensor(1.0), 1.0))\n"
                  "    k = pyro.sample('k', dist.Bernoulli(p))\n"
                  "    pyro.sample('x', dist.Normal(k, 1.0), obs=data['x'])\n")
    problem = model_entry(f"{path}:prior").build(default_settings())
    assert problem.var_names == ["z"] and problem.kwargs == {}
    data = tmp_path / "d.csv"
    data.write_text("x,unused\n0.5,1\n")
    problem = model_entry(f"{path}:anything", data).build(default_settings())
    assert problem.var_names == ["p"]  # the discrete k has no draws to compare
    assert problem.kwargs["unused"].dtype == torch.long


def test_files_with_the_same_name_are_different_modules(tmp_path):
    for sub, value in [("a", 1.0), ("b", 2.0)]:
        (tmp_path / sub).mkdir()
        _write(tmp_path / sub, f"SCALE = {value}\n\ndef model():\n    return SCALE\n")
    first = load_model_function(f"{tmp_path / 'a' / 'user.py'}:model")
    second = load_model_function(f"{tmp_path / 'b' / 'user.py'}:model")
    assert (first(), second()) == (1.0, 2.0) and first.__module__ != second.__module__


def test_a_file_beside_the_model_can_be_imported(tmp_path):
    (tmp_path / "helpers_um.py").write_text("SCALE = 3.0\n")
    path = _write(tmp_path, "from helpers_um import SCALE\n\ndef model():\n    return SCALE\n")
    assert load_model_function(f"{path}:model")() == 3.0


def test_integer_only_data_runs_in_the_dtype_asked_for(tmp_path):
    """With no floating-point array to follow, the comparison's default dtype is --dtype."""
    from pyro_dgm.compare.runner import run_comparison

    path = _write(tmp_path, "def model(counts):\n"
                  "    rate = pyro.sample('rate', dist.Gamma(2.0, 1.0))\n"
                  "    with pyro.plate('data', counts.shape[0]):\n"
                  "        pyro.sample('counts', dist.Poisson(rate), obs=counts)\n")
    data = tmp_path / "counts.json"
    data.write_text('{"counts": [3, 1, 4, 1, 5]}')
    before = torch.get_default_dtype()
    settings = default_settings(quick=True, num_steps=50, dtype=torch.float64, progress=False)
    result = run_comparison(file_model(f"{path}:model", data), ["meanfield", "laplace"],
                            reference="laplace", settings=settings, log=None)
    assert result.idatas["meanfield"].posterior["rate"].dtype == np.float64
    assert torch.get_default_dtype() == before
