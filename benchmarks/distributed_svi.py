"""``pyro-dgm train --distributed`` on 2 CPU processes against one process, same total batch.

Both runs see the same global minibatches (the per-epoch permutation is seeded by
``(seed, epoch)`` and sharded by rank), so they differ only in the Monte Carlo noise of the
latent draws. For each seed the final test ELBO of both is recorded; the difference of the
means is compared with its standard error from the seed-to-seed spread (``z``), and with
the evaluation error of one test ELBO (per-image ELBO spread / sqrt(test rows)).

Run: ``python -m benchmarks.distributed_svi [--quick]`` (starts ``torchrun`` itself).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import emit, parser

ENV_DROP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _run(cmd: list[str], out: Path) -> tuple[list[dict], float]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed: {proc.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text()), wall


def _mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1)
    return m, math.sqrt(var)


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None)
    args = p.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 4)  # quick: a smoke run, no z
    rows, epochs = (200, 2) if args.quick else (1500, 30)
    common = ["--max-rows", str(rows), "--epochs", str(epochs), "--batch-size", "100",
              "--no-progress", "--device", args.device]
    single_cmd = [sys.executable, "-m", "pyro_dgm", "train"]
    dist_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "pyro_dgm", "train", "--distributed"]
    results: dict = {"single": [], "distributed": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seed, args.seed + seeds):
            for mode, cmd in (("single", single_cmd), ("distributed", dist_cmd)):
                out = Path(tmp) / f"{mode}-{seed}"
                history, wall = _run(cmd + common + ["--seed", str(seed), "--out", str(out)],
                                     out)
                results[mode].append({
                    "seed": seed, "test_elbo": history[-1]["test_elbo"],
                    "train_loss": history[-1]["train_loss"],
                    "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
                    "wall_seconds": wall})
    m1, s1 = _mean_sd([r["test_elbo"] for r in results["single"]])
    m2, s2 = _mean_sd([r["test_elbo"] for r in results["distributed"]])
    se = math.sqrt((s1 ** 2 + s2 ** 2) / seeds) if seeds > 1 else float("nan")
    summary = {"test_elbo_single_mean": m1, "test_elbo_single_sd": s1,
               "test_elbo_distributed_mean": m2, "test_elbo_distributed_sd": s2,
               "difference": m2 - m1, "standard_error": se,
               "z": (m2 - m1) / se if se > 0 else float("nan")}  # nan: one seed
    results["summary"] = summary
    t1 = _mean_sd([r["seconds_per_epoch"] for r in results["single"]])[0]
    t2 = _mean_sd([r["seconds_per_epoch"] for r in results["distributed"]])[0]
    ratios = {"seconds_per_epoch_distributed2_vs_single": t2 / t1}
    settings = {"rows": rows, "epochs": epochs, "total_batch_size": 100, "seeds": seeds,
                "processes": 2, "backend": "gloo", "objective": "elbo",
                "threads_per_process": 1}  # train's --threads default, OMP_NUM_THREADS=1
    return emit("distributed_svi", results, ratios, settings=settings, device=args.device,
                out=args.out)


if __name__ == "__main__":
    main()
