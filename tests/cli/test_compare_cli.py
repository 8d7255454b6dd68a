import subprocess
import sys

import pandas as pd
import pytest
import torch

from pyro_dgm.cli import main
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.compare.registry import METHODS, MethodEntry

TINY = ["--num-samples", "20", "--num-warmup", "20", "--num-chains", "2", "--num-steps", "30",
        "--no-progress"]


def test_compare_writes_report(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["compare", "--model", "fa-synthetic", "--methods", "nuts,meanfield",
                 "--out", str(out), *TINY])
    assert code == 0
    for name in ["nuts.nc", "meanfield.nc", "comparison.csv", "comparison.md", "summary.csv",
                 "summary.md", "forest.png", "sd_ratios.png", "marginals.png", "index.md"]:
        assert (out / name).stat().st_size > 0, name
    idata = arviz.from_netcdf(str(out / "meanfield.nc"))
    assert idata.posterior["W_lower"].shape[:2] == (1, 40)
    nuts = arviz.from_netcdf(str(out / "nuts.nc"))
    assert nuts.posterior.sizes["chain"] == 2
    assert nuts.posterior.attrs["chain_start"] == "MAP + jitter 0.1"
    table = pd.read_csv(out / "comparison.csv")
    assert set(table["method"]) == {"nuts", "meanfield"}
    # hmc (the default reference) does not run: the MCMC method named is the reference
    assert float(table.loc[table["method"] == "nuts", "std_mean_error"].abs().max()) == 0
    printed = capsys.readouterr().out
    assert "| method |" in printed and "index.md" in printed


@pytest.mark.parametrize("argv, fragment", [
    (["compare", "--model", "nope"], "unknown model 'nope'"),
    (["compare", "--methods", "nuts,magic"], "unknown method 'magic'"),
    (["compare", "--methods", "meanfield"], "reference 'hmc'"),
    (["compare", "--methods", "meanfield,laplace", "--reference", "nuts"], "reference 'nuts'"),
    (["compare", "--num-samples", "0"], "num_samples"),
    (["compare", "--device", "tpu"], "device"),
    (["compare", "--bogus"], "unrecognized arguments"),
])
def test_bad_input_is_one_line_and_nonzero(argv, fragment, capsys, tmp_path):
    code = main([*argv, "--out", str(tmp_path / "o"), "--no-progress"]
                if argv[-1] != "--bogus" else argv)
    err = capsys.readouterr().err
    assert code != 0
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unwritable_out_fails_before_sampling(tmp_path, monkeypatch, capsys):
    def must_not_run(problem, settings):
        raise AssertionError("sampling started")

    monkeypatch.setitem(METHODS._entries, "nuts", MethodEntry("nuts", must_not_run, "mcmc"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["compare", "--methods", "nuts", "--out", str(blocker / "sub"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "out: cannot write" in err and len(err.strip().splitlines()) == 1


def test_a_failing_method_does_not_lose_the_others(tmp_path, monkeypatch, capsys):
    def broken(problem, settings):
        raise torch.linalg.LinAlgError("Hessian is not positive definite")

    monkeypatch.setitem(METHODS._entries, "laplace", MethodEntry("laplace", broken, "vi"))
    out = tmp_path / "r"
    code = main(["compare", "--model", "fa-synthetic", "--methods", "nuts,laplace,meanfield",
                 "--out", str(out), *TINY])
    assert code == 0
    assert (out / "nuts.nc").exists() and (out / "meanfield.nc").exists()
    assert not (out / "laplace.nc").exists()
    assert "laplace failed" in (out / "index.md").read_text()
    assert "method laplace failed" in capsys.readouterr().err


def test_console_script_lists_registry():
    result = subprocess.run([sys.executable, "-m", "pyro_dgm", "compare", "--list"],
                            capture_output=True, text=True, check=True)
    for name in ["fa", "fa-local", "fa-synthetic", "hmc", "nuts", "meanfield", "fullrank",
                 "laplace"]:
        assert name in result.stdout


@pytest.mark.slow
def test_quick_default_job_shows_known_vi_behaviour(tmp_path):
    """The README's main job in --quick mode (ChEES-HMC reference): full-rank ~ HMC,
    mean-field under-dispersed; the reference's chains agree (nested R-hat)."""
    out = tmp_path / "quick"
    assert main(["compare", "--quick", "--out", str(out), "--no-progress"]) == 0
    for method in ["hmc", "meanfield", "fullrank", "laplace"]:
        assert arviz.from_netcdf(str(out / f"{method}.nc")).posterior.sizes["draw"] > 0
    table = pd.read_csv(out / "comparison.csv")
    ratio = table.groupby("method")["sd_ratio"]
    assert 0.85 < ratio.median()["fullrank"] < 1.15
    assert ratio.quantile(0.1)["fullrank"] > 0.7
    # mean-field: the marginals of strongly correlated parameters are too narrow
    assert ratio.min()["meanfield"] < 0.6
    assert ratio.median()["meanfield"] < ratio.median()["fullrank"]
    errors = table.groupby("method")["std_mean_error"].apply(lambda s: s.abs().mean())
    assert errors["fullrank"] < 0.25 and errors["meanfield"] < 0.5
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["hmc", "max_nested_r_hat"] < 1.02
    assert summary.loc["hmc", "min_ess_bulk"] > 1000
