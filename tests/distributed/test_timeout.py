"""A frozen rank: the others stop within ``--timeout`` and name it (issue 16, case 10)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from pyro_dgm.defaults import DISTRIBUTED_TIMEOUT
from pyro_dgm.distributed import TORCHRUN_ENV, Heartbeat, StuckRankError

SMALL = ["--max-rows", "40", "--latent-dims", "2", "--hidden-dims", "8", "--batch-size", "20",
         "--no-progress", "--epochs", "3"]
# rank 1 freezes when its second epoch's batches are asked for (after a marker file)
_FREEZE = """
import os, sys, time
import pyro_dgm.distributed.ddp as ddp
orig = ddp.DDPStrategy.index_batches
def frozen(self, epoch, *args):
    if epoch == 1:
        open(os.environ["FROZEN_MARK"], "w").close()
        time.sleep(600)
    return orig(self, epoch, *args)
ddp.DDPStrategy.index_batches = frozen
from pyro_dgm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_timeout_is_well_under_torchs():
    assert 0 < DISTRIBUTED_TIMEOUT <= 120


@pytest.mark.slow
def test_frozen_rank_is_named_within_the_timeout(tmp_path):
    timeout = 5
    port = _free_port()
    mark = tmp_path / "frozen"
    base = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    base.update(OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), FROZEN_MARK=str(mark))
    args = ["train", "--distributed", "--timeout", str(timeout), "--out", str(tmp_path / "r"),
            *SMALL]
    procs = []
    for rank in (0, 1):
        env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
        cmd = ([sys.executable, "-m", "pyro_dgm", *args] if rank == 0 else
               [sys.executable, "-c", _FREEZE, *args])
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 240
        while not mark.exists():
            assert procs[0].poll() is None and time.monotonic() < deadline, \
                procs[0].communicate()[1][-2000:] if procs[0].poll() is not None else "slow"
            time.sleep(0.05)
        frozen_at = time.monotonic()
        _, err = procs[0].communicate(timeout=timeout + 60)
        waited = time.monotonic() - frozen_at
    finally:
        procs[1].kill()
        procs[1].communicate()
        if procs[0].poll() is None:
            procs[0].kill()
    assert procs[0].returncode == 1, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("pyro-dgm train: rank 0: waited 5 s"), lines[0]
    assert "rank 1 (last started epoch 1 step 2" in lines[0] and "is stuck" in lines[0]
    # rank 0 finishes its epoch-1 test evaluation first, then waits `timeout` in epoch 2
    assert waited < timeout + 15, waited


def test_explain_names_ranks_behind_without_a_store():
    beat = Heartbeat(rank=2, world_size=3, timeout=7)
    beat.beat(0, 4)
    error = beat.explain(RuntimeError("[gloo] Timed out waiting 7000ms for recv"))
    assert isinstance(error, StuckRankError)
    assert str(error).startswith("rank 2: waited 7 s for the other processes at epoch 1 step 5")
    assert "rank 0 (no step started), rank 1 (no step started) are stuck" in str(error)
    other = ValueError("not a timeout")
    assert beat.explain(other) is other
