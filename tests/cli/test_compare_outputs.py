"""``pyro-dgm compare`` never loses a directory or leaves a report of mixed runs (issue 16:
cases 4, 7 and 11)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_dgm.cli import main
from pyro_dgm.compare import default_settings, run_comparison
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.compare.registry import METHODS, MethodEntry
from pyro_dgm.compare.report_dir import MARKER, ReportDir
from pyro_dgm.compare.settings import num_threads

# VI methods only: a run takes a second or two (no MCMC chain processes)
TINY = ["--num-samples", "20", "--num-chains", "1", "--num-steps", "30", "--no-progress",
        "--reference", "meanfield"]
FAST = ["--model", "fa-synthetic", "--methods", "meanfield,fullrank", *TINY]


def _run_id(out: Path) -> str:
    return json.loads((out / MARKER).read_text())["run_id"]


def _check_one_run(out: Path) -> None:
    """index.md, the marker and every .nc file name the same run."""
    run_id = _run_id(out)
    assert f"Run id `{run_id}`" in (out / "index.md").read_text()
    for nc in out.glob("*.nc"):
        assert arviz.from_netcdf(str(nc)).posterior.attrs["run_id"] == run_id, nc.name


def test_a_directory_of_other_files_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["compare", *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-dgm compare: --out:") and "--overwrite" in err
    assert "\n" not in err and (out / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging left


def test_overwrite_replaces_it_and_a_previous_report_is_replaced_whole(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert main(["compare", *FAST, "--out", str(out), "--overwrite"]) == 0
    assert not (out / "old.txt").exists()
    first = _run_id(out)
    (out / "stale.nc").write_bytes(b"from an older run")
    assert main(["compare", "--model", "fa-synthetic", "--methods", "meanfield,laplace",
                 *TINY, "--out", str(out)]) == 0
    assert _run_id(out) != first
    assert not (out / "stale.nc").exists() and not (out / "fullrank.nc").exists()
    _check_one_run(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("argv, fragment", [
    (["--device", "mps"], "pyro-dgm compare: --device: unknown device 'mps'"),
    (["--seed", "-1"], "pyro-dgm compare: --seed: seed must be >= 0"),
    (["--threads", "0"], "pyro-dgm compare: --threads: threads must be >= 1"),
])
def test_bad_arguments_create_no_directory(argv, fragment, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", *FAST, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(fragment) and "\n" not in err, err
    assert not any(tmp_path.iterdir())


def test_a_failed_run_leaves_the_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert main(["compare", *FAST, "--out", str(out)]) == 0
    before = _run_id(out)

    def broken(problem, settings):
        raise KeyboardInterrupt  # as Ctrl-C inside a method

    monkeypatch.setitem(METHODS._entries, "fullrank", MethodEntry("fullrank", broken, "vi"))
    assert main(["compare", *FAST, "--out", str(out)]) == 130
    assert _run_id(out) == before
    _check_one_run(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


@pytest.mark.parametrize("delay", [0.5, 3.0, 5.0])
def test_sigint_never_mixes_runs(delay, tmp_path):
    """Ctrl-C at several moments of a second run: exit 130 keeps the first report whole;
    a Ctrl-C once the second report is in place is too late and the run exits 0 — never an
    index.md beside another run's .nc files."""
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "pyro_dgm", "compare", *FAST, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    first = _run_id(out)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130, -signal.SIGINT), err.decode()[-2000:]
    _check_one_run(out)
    assert (_run_id(out) == first) == (proc.returncode != 0), err.decode()[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_report_dir_refuses_a_file(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(ValueError, match="out: .* is a file"):
        ReportDir(path)


def test_ctrl_c_during_the_commit_is_held_back(tmp_path, monkeypatch):
    """A SIGINT between the two renames of a commit must not leave ``out`` renamed aside:
    it is dropped, the commit completes, ``on_commit`` runs and the handler is restored."""
    out = tmp_path / "r"
    with ReportDir(out) as first:
        first.commit()
    real_replace, calls, seen = os.replace, [], []

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:  # the old report is aside, the new one not yet in place
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with ReportDir(out, on_commit=lambda: seen.append(True)) as second:
        second.commit()
    assert len(calls) == 2 and seen == [True] and signal.getsignal(signal.SIGINT) is before
    assert _run_id(out) == second.run_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_threads_default_and_restore(tmp_path):
    settings = default_settings(num_samples=5, num_warmup=5, num_chains=1, num_steps=5,
                                progress=False)
    assert num_threads(settings) == max(1, (os.cpu_count() or 1))
    assert num_threads(default_settings(num_chains=64)) == 1
    assert num_threads(default_settings(threads=3)) == 3
    before = torch.get_num_threads()
    seen = []

    def spy(problem, settings):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    METHODS.register("spy-method", kind="vi")(spy)
    try:
        with pytest.raises(ValueError, match="reference method 'spy-method' failed"):
            run_comparison("fa-synthetic", ["spy-method"], reference="spy-method",
                           settings=default_settings(num_chains=1, threads=1, progress=False),
                           log=None)
    finally:
        METHODS._entries.pop("spy-method")
    assert seen == [1] and torch.get_num_threads() == before
