"""``pyro-dgm train --distributed``: bad input in-process, one 2-process torchrun run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pyro_dgm.cli import main
from pyro_dgm.distributed import TORCHRUN_ENV

SMALL = ["--max-rows", "40", "--latent-dims", "2", "--hidden-dims", "8", "--batch-size", "20",
         "--no-progress"]


def test_distributed_without_torchrun_is_one_line_error(monkeypatch, capsys, tmp_path):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    code = main(["train", "--distributed", "--epochs", "1", "--out", str(tmp_path / "r"),
                 *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err and "torchrun environment" in err, err
    assert not (tmp_path / "r").exists()


def test_world_size_larger_than_data_is_one_line_error(monkeypatch, capsys, tmp_path):
    env = {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29998"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = ["train", "--distributed", "--epochs", "1", "--out", str(tmp_path / "r"), *SMALL]
    args[args.index("--max-rows") + 1] = "3"
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err and "world size 4 is larger than the data set (3 rows)" in err, err


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "pyro_dgm", "train", "--distributed", "--epochs", "2", "--out",
           str(out), *SMALL]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(abs(h["test_elbo"]) < 1e3 and h["train_loss"] > 0 for h in history)
    assert proc.stdout.count("test ELBO") == 1  # only rank 0 reports
