"""``pyro-dgm compare --model PATH.py:FUNCTION --data FILE`` (issue 15, item 1): the report
for a model of the user's, and one line plus exit status 2 for every bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pyro_dgm.cli import main
from pyro_dgm.compare._arviz import arviz

ROOT = Path(__file__).resolve().parents[2]
LINREG, NPZ = "tests/data/linreg.py:model", "tests/data/linreg.npz"
TINY = ["--num-samples", "20", "--num-warmup", "20", "--num-chains", "2", "--num-steps", "30",
        "--no-progress", "--threads", "1"]


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_user_model_report(tmp_path, in_root, capsys):
    out = tmp_path / "report"
    code = main(["compare", "--model", LINREG, "--data", NPZ, "--methods", "nuts,meanfield",
                 "--out", str(out), *TINY])
    assert code == 0
    for name in ["nuts.nc", "meanfield.nc", "comparison.csv", "summary.md", "forest.png",
                 "sd_ratios.png", "marginals.png", "index.md"]:
        assert (out / name).stat().st_size > 0, name
    nuts = arviz.from_netcdf(str(out / "nuts.nc"))
    assert nuts.posterior["alpha"].shape == (2, 20, 3)
    assert nuts.posterior.attrs["model"] == "linreg.py:model"
    assert nuts.posterior.attrs["reference_source"] == "method nuts of this run"
    table = pd.read_csv(out / "comparison.csv")
    assert set(table["parameter"]) == {"alpha[0]", "alpha[1]", "alpha[2]", "beta", "sigma"}
    assert "linreg.npz" in (out / "index.md").read_text()
    assert "index.md" in capsys.readouterr().out


@pytest.mark.slow
def test_the_documented_command(tmp_path):
    """The acceptance command, as a user types it (about 30 s on 2 cores)."""
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pyro_dgm", "compare", "--model", LINREG, "--data", NPZ,
         "--quick", "--out", str(out), "--no-progress", "--threads", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # every default method ran
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert list(summary.index) == ["nuts", "meanfield", "fullrank", "laplace"]
    for name in ["nuts", "meanfield", "fullrank", "laplace"]:
        assert (out / f"{name}.nc").exists()
    # a well-identified regression: the full-rank Gaussian agrees with NUTS
    assert summary.loc["fullrank", "max_abs_std_error"] < 0.6
    assert 0.7 < summary.loc["fullrank", "median_sd_ratio"] < 1.3
    assert summary.loc["nuts", "max_r_hat"] < 1.1


def _files(tmp_path):
    py = tmp_path / "user.py"
    py.write_text("import pyro\nimport pyro.distributions as dist\n\nNOT_A_FUNCTION = 3\n\n"
                  "def model(x, y=None):\n"
                  "    mu = pyro.sample('mu', dist.Normal(x.new_zeros(()), 1.0))\n"
                  "    with pyro.plate('data', len(x)):\n"
                  "        pyro.sample('y', dist.Normal(mu + x, 1.0), obs=y)\n\n"
                  "def broken(x):\n"
                  "    raise KeyError('no such column in my model')\n")
    (tmp_path / "syntax.py").write_text("def model(:\n")
    (tmp_path / "ok.json").write_text('{"x": [1.0, 2.0], "y": [0.5, 1.0]}')
    (tmp_path / "extra.json").write_text('{"x": [1.0], "y": [0.5], "z": [1.0]}')
    (tmp_path / "no_x.json").write_text('{"y": [0.5]}')
    (tmp_path / "names.csv").write_text("x,who\n1.0,alice\n")
    (tmp_path / "strings.json").write_text('{"x": ["a", "b"]}')
    (tmp_path / "data.txt").write_text("1 2")
    return py


BAD = [
    (["--model", "{d}/nope.py:model"], "--model: {d}/nope.py: no such file"),
    (["--model", "{d}/user.py:missing", "--data", "{d}/ok.json"],
     "--model: {d}/user.py: no function 'missing' (functions defined there: broken, model)"),
    (["--model", "{d}/user.py:NOT_A_FUNCTION"], "--model: {d}/user.py: 'NOT_A_FUNCTION' is not "
     "callable (it is a int)"),
    (["--model", "{d}/user.py"], "--model: {d}/user.py: name the function too"),
    (["--model", "{d}/syntax.py:model"], "--model: {d}/syntax.py: importing it failed "
     "(SyntaxError"),
    (["--model", "{d}/user.py:broken", "--data", "{d}/ok.json"], "--data: {d}/ok.json: "
     "array(s) 'y' are not parameters of {d}/user.py:broken (its parameters: x)"),
    (["--model", "{d}/user.py:broken", "--data", "{d}/no_x.json"], "not parameters"),
    (["--model", "{d}/user.py:model", "--data", "{d}/extra.json"], "--data: {d}/extra.json: "
     "array(s) 'z' are not parameters of {d}/user.py:model (its parameters: x, y)"),
    (["--model", "{d}/user.py:model", "--data", "{d}/no_x.json"], "--data: {d}/user.py:model "
     "needs 'x' (no default) and {d}/no_x.json has no array of that name"),
    (["--model", "{d}/user.py:model"], "--data: {d}/user.py:model needs 'x' (no default) and "
     "no --data file gives it"),
    (["--model", "{d}/user.py:model", "--data", "{d}/names.csv"], "--data: {d}/names.csv: "
     "column 'who' is not numeric (value 'alice')"),
    (["--model", "{d}/user.py:model", "--data", "{d}/strings.json"], "--data: "
     "{d}/strings.json: array 'x' is not numeric"),
    (["--model", "{d}/user.py:model", "--data", "{d}/data.txt"], "--data: {d}/data.txt: "
     "unreadable file type '.txt'"),
    (["--model", "{d}/user.py:model", "--data", "{d}/gone.npz"], "--data: {d}/gone.npz: no "
     "such file"),
    (["--model", "fa", "--data", "{d}/ok.json"], "--data: only a model from a file"),
    (["--data", "{d}/ok.json"], "--data: only a model from a file"),
]


@pytest.mark.parametrize("argv, expected", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    _files(tmp_path)
    argv = [a.format(d=tmp_path) for a in argv]
    code = main(["compare", *argv, "--out", str(tmp_path / "o"), *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("pyro-dgm compare: --")
    assert expected.format(d=tmp_path) in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("source, data, expected", [
    ("def model(x):\n    raise KeyError('no such column')\n", '{"x": [1.0]}',
     "--model: {py}:model: calling it with the data failed (KeyError: "),
    ("def model(x, lp):\n    pass\n", '{"x": [1.0], "lp": [0.5]}',
     "--data: {d}: array(s) 'lp' share a name with an option"),
], ids=["model-fails", "reserved-name"])
def test_errors_found_when_the_model_meets_its_data(tmp_path, capsys, source, data, expected):
    py, d = tmp_path / "m.py", tmp_path / "d.json"
    py.write_text(source)
    d.write_text(data)
    code = main(["compare", "--model", f"{py}:model", "--data", str(d),
                 "--out", str(tmp_path / "o"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert expected.format(py=py, d=d) in err
