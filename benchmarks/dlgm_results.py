"""Reproduce Burda et al.'s ordering on binarized 8×8 digits and write ``docs/results.md``.

Runs ``pyro-dgm train`` and ``pyro-dgm evaluate`` (test L_5000) for: VAE k=1, IWAE k=5 and
k=50 with one stochastic layer; VAE k=1 and IWAE k=50 with two; an IAF flow guide. Each
row of the table carries the exact commands that produced it. Runs go in parallel
(``--jobs``), one thread each.

Usage::

    python -m benchmarks.dlgm_results --out runs/results --jobs 6   # ~10-20 min, 2 cores
    python -m benchmarks.dlgm_results --quick                         # smoke run, < 1 min
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROWS = [
    # name, layers, objective, k, guide, latent dims
    ("VAE", "elbo", 1, "gaussian", [10]),
    ("IWAE", "iwae", 5, "gaussian", [10]),
    ("IWAE", "iwae", 50, "gaussian", [10]),
    ("VAE", "elbo", 1, "gaussian", [10, 5]),
    ("IWAE", "iwae", 50, "gaussian", [10, 5]),
    ("VAE + IAF guide", "elbo", 1, "iaf", [10]),
]


_QUICK = ["--max-rows", "100", "--hidden-dims", "16"]


def commands(row, out: Path, epochs: int, num_samples: int, quick: bool = False
             ) -> tuple[list[str], list[str]]:
    name, objective, k, guide, latent = row
    tag = f"{len(latent)}L-{objective}-k{k}-{guide}"
    run = out / tag
    train = ["pyro-dgm", "train", "--model", "dlgm", "--latent-dims", *map(str, latent),
             "--objective", objective, "--k", str(k), "--guide", guide,
             "--epochs", str(epochs), "--out", str(run), "--no-progress",
             *(_QUICK if quick else [])]
    evaluate = ["pyro-dgm", "evaluate", str(run), "--num-samples", str(num_samples)]
    return train, evaluate


def _in_process(argv: list[str]) -> str:
    import contextlib
    import io

    from pyro_dgm.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        if main(argv[1:]) != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed")
    return buffer.getvalue()


def run_row(row, out, epochs, num_samples, quick=False):
    """Train (or resume an interrupted run of the same row: resuming is exact) and
    evaluate one row."""
    from pyro_dgm.dlgm import checkpoint_paths

    train, evaluate = commands(row, out, epochs, num_samples, quick)
    run_dir = Path(train[train.index("--out") + 1])
    executed = train
    if checkpoint_paths(run_dir):
        executed = ["pyro-dgm", "train", "--resume", str(run_dir), "--epochs", str(epochs),
                    "--no-progress"]
    began = time.perf_counter()
    if quick:
        _in_process(executed)
    else:
        subprocess.run(executed, check=True, stdout=subprocess.DEVNULL)
    trained = time.perf_counter() - began
    if quick:
        result = json.loads(_in_process(evaluate))
    else:
        result = json.loads(subprocess.run(evaluate, check=True, capture_output=True,
                                           text=True).stdout)
    result["executed"] = executed
    result["train_seconds"] = trained
    result["eval_seconds"] = time.perf_counter() - began - trained
    return row, train, evaluate, result


def table(results) -> str:
    lines = ["| model | layers | k | guide | test L_5000 (nats) | test ELBO | active units | "
             "bits/dim per layer | train s | commands |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, _objective, k, guide, latent), train, evaluate, r in results:
        units = " + ".join(f"{v}/{d}" for v, d in zip(r["active_units"].values(), latent,
                                                      strict=True))
        bits = ", ".join(f"{r['bits_per_dim'][f'z{i + 1}']:.3f}" for i in range(len(latent)))
        cmd = "`" + shlex.join(train) + "`<br>`" + shlex.join(evaluate) + "`"
        lines.append(
            f"| {name} | {len(latent)} ({'-'.join(map(str, latent))}) | {k} | {guide} | "
            f"{r['test_log_likelihood']:.2f} ± {r['test_log_likelihood_se']:.2f} | "
            f"{r['test_elbo']:.2f} | {units} | {bits} | {r['train_seconds']:.0f} | {cmd} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/results")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help="two rows, 1 epoch on 100 images, L_50: a smoke run")
    p.add_argument("--table", default=None, help="write the Markdown table here")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.quick:  # two tiny rows in this process, one after the other
        import tempfile

        import torch

        torch.set_num_threads(1)
        out = Path(tempfile.mkdtemp(prefix="dlgm-results-"))
        results = [run_row(r, out, 1, 50, quick=True) for r in ROWS[:2]]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(
                lambda r: run_row(r, out, args.epochs, args.num_samples), ROWS))
    text = table(results)
    (out / "results.json").write_text(json.dumps(
        [{"row": list(r[0][:4]) + [r[0][4]], "train": r[1], "evaluate": r[2], **r[3]}
         for r in results], indent=1))
    if args.table:
        Path(args.table).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
