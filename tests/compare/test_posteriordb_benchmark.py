"""benchmarks/posteriordb.py: Stan's rule, the scores it records, and a --quick run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
bench = pytest.importorskip("benchmarks.posteriordb")

from pyro_dgm.data import posteriordb as pdb  # noqa: E402


def _rows(errors, ratios):
    return pd.DataFrame({"parameter": [f"x[{i}]" for i in range(len(errors))],
                         "std_mean_error": errors, "sd_ratio": ratios})


def test_stan_rule_at_its_bounds():
    # |error| < 0.25 strictly; the sd ratio within [0.8, 1.25] inclusive
    assert bench.stan_rule(_rows([0.0, -0.249, 0.249], [0.8, 1.25, 1.0])) == (True, [])
    passed, bad = bench.stan_rule(_rows([0.25, 0.0, -0.3, 0.1], [1.0, 0.79, 1.0, 1.26]))
    assert not passed
    assert [b.split(":")[0] for b in bad] == ["x[0]", "x[1]", "x[2]", "x[3]"]


@pytest.mark.slow
def test_quick_run_records_scores_and_nuts_agreement(tmp_path, capsys):
    """The benchmark's --quick on the smallest posterior with a few methods (~15 s)."""
    if not pdb.posteriordb_available():
        pytest.skip("no posteriordb bundle found (see docs/posteriordb.md)")
    out, table = tmp_path / "pdb.json", tmp_path / "pdb.md"
    methods = "nuts,mh,meanfield,meanfield+psis,pathfinder"
    record = bench.main(["--quick", "--methods", methods, "--out", str(out),
                         "--table", str(table)])
    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(record["results"]))
    assert record["benchmark"] == "posteriordb"
    assert record["machine"]["torch_threads"] == 1
    post = record["results"]["posteriors"][bench.QUICK_POSTERIOR]
    assert post["reference"] == "reference"
    assert "posteriordb" in post["reference_source"]
    scores = post["methods"]
    assert sorted(scores) == sorted(methods.split(","))
    for method, s in scores.items():
        assert "failed" not in s, (method, s)
        assert s["stan_rule"] == (s["max_abs_std_error"] < 0.25 and s["min_sd_ratio"] >= 0.8
                                  and s["max_sd_ratio"] <= 1.25)
        assert s["min_sd_ratio"] <= s["median_sd_ratio"] <= s["max_sd_ratio"]
        assert s["wall_time_s"] >= 0
    assert scores["mh"]["grad_evals"] == 0
    assert scores["meanfield"]["grad_evals"] == 4 * scores["meanfield"]["svi_steps"]
    assert scores["meanfield+psis"]["grad_evals"] == scores["meanfield"]["grad_evals"]
    assert scores["pathfinder"]["grad_evals"] > 0
    assert scores["nuts"]["grad_evals"] is None  # Pyro's NUTS exports no tree sizes
    agreement = post["nuts_agreement"]
    assert agreement["passes"] == scores["nuts"]["stan_rule"]
    assert agreement["passes"] == (not agreement["violations"])
    share = record["ratios"]["mh_stan_rule_share"]
    assert share == float(scores["mh"]["stan_rule"])
    lines = table.read_text().splitlines()
    assert len(lines) == 2 + len(scores)
    assert all(line.replace("\\|", "").count("|") == 10 for line in lines)
    bench.main(["--render", str(out)])  # the tables again, from the file
    rendered = capsys.readouterr().out
    assert table.read_text() in rendered
    nuts_row = "| nuts | " + ("1 of 1" if scores["nuts"]["stan_rule"] else "0 of 1")
    assert nuts_row in rendered


def test_without_a_bundle_it_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(pdb, "posteriordb_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick"])
    assert e.value.code == 2
    assert "PYRO_DGM_POSTERIORDB" in capsys.readouterr().err
