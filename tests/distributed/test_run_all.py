"""benchmarks/run_all.py: record parsing, failure records, the summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
run_all = pytest.importorskip("benchmarks.run_all")


def test_discover_lists_the_benchmarks():
    names = run_all.discover()
    assert "distributed_svi" in names
    assert "run_all" not in names and not any(n.startswith("_") for n in names)


def test_parse_record_takes_the_json_object_among_other_output():
    record = {"benchmark": "x", "results": {"a": 1.0}, "ratios": {"r": 2.0}}
    stdout = "warming up\n" + json.dumps(record, indent=2) + "\ndone\n"
    assert run_all.parse_record(stdout) == record
    assert run_all.parse_record("no json here\n{not json\n") is None
    assert run_all.parse_record('{"other": 1}\n') is None


def test_failures_are_recorded_and_summarized(tmp_path):
    failed = run_all.run_one("does_not_exist", quick=True, timeout=60)
    assert failed["status"].startswith("failed (exit")
    assert "does_not_exist" in failed["stderr_tail"]
    ok = {"benchmark": "fake", "status": "ok", "seconds": 1.25, "cpu_seconds": 2.0,
          "ratios": {"ours_vs_pyro": 0.5}}
    text = run_all.summary_markdown([ok, failed], quick=True,
                                    machine={"platform": "test", "cpu_count": 2})
    assert "| fake | ok | 1.2 | 2.0 | ours_vs_pyro = 0.5 |" in text
    assert "## does_not_exist: failed" in text


def test_main_writes_records_and_summary(tmp_path, monkeypatch):
    def fake_run_one(name, *, quick, timeout, device="cpu"):
        assert quick and timeout <= 150
        return {"benchmark": name, "status": "ok", "seconds": 0.5, "ratios": {"r": 1.0}}

    monkeypatch.setattr(run_all, "run_one", fake_run_one)
    code = run_all.main(["--quick", "--only", "distributed_svi", "--out-dir", str(tmp_path)])
    assert code == 0
    assert json.loads((tmp_path / "distributed_svi.json").read_text())["status"] == "ok"
    assert "distributed_svi | ok" in (tmp_path / "summary.md").read_text()
