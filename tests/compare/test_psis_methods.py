"""``<vi method>+psis`` in the comparison, k̂ columns and the report's verdicts (issue 13)."""

import pandas as pd
import pytest

from pyro_dgm.cli import main
from pyro_dgm.compare import default_settings, run_comparison

TINY = default_settings(num_samples=100, num_chains=1, num_steps=40, progress=False)


def test_psis_method_reuses_the_base_draws_and_reports_khat(tmp_path):
    result = run_comparison("fa-synthetic", ["meanfield", "meanfield+psis"],
                            reference="meanfield", out=tmp_path / "r", settings=TINY,
                            log=None)
    summary = result.summary.set_index("method")
    base, psis = result.idatas["meanfield"], result.idatas["meanfield+psis"]
    assert psis.posterior.attrs["psis_khat"] == pytest.approx(summary.loc["meanfield", "khat"])
    assert summary.loc["meanfield+psis", "khat"] == summary.loc["meanfield", "khat"]
    assert 1 <= summary.loc["meanfield", "psis_ess"] <= 100
    # resampled draws are draws of the base method
    values = set(base.posterior["psi"].values.reshape(100, -1)[:, 0].tolist())
    assert set(psis.posterior["psi"].values.reshape(100, -1)[:, 0].tolist()) <= values
    index = (tmp_path / "r" / "index.md").read_text()
    assert "PSIS k̂" in index and "- **meanfield**: k̂ =" in index
    saved = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert {"khat", "psis_ess"} <= set(saved.columns)


def test_psis_of_an_mcmc_method_is_one_line_error(tmp_path, capsys):
    code = main(["compare", "--model", "fa-synthetic", "--methods", "nuts,nuts+psis",
                 "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "PSIS correction needs a VI method" in err and "\n" not in err
    assert not (tmp_path / "o").exists()
