"""Benchmark: ArviZ export of a large MCMC run, with and without scoring (issue 20).

Model: linear regression on 5,000 rows, 25 coefficients (the first column of the design is
an intercept) and a noise scale: 26 parameters; ``y_n ~ N(x_n . beta, sigma)``, written so
that it broadcasts over draws (``(x * beta).sum(-1)``). Draws: 64 chains x 1,000 draws
around the least-squares fit (the export does not care where draws come from, so no sampler
runs; a stand-in for a finished ``MCMC`` run holds them).

Each case runs in its own subprocess, so that the process's peak resident memory
(``resource.getrusage(...).ru_maxrss``) belongs to that case alone:

- ``no_scoring``: ``from_mcmc(run, log_likelihood=False, lp=False)``: wall seconds (median of
  3) and peak memory;
- ``lp``: ``from_mcmc(run, log_likelihood=False)``: the model scored for every draw in
  chunks (default budget ``DEFAULT_SCORE_MEMORY_MB``): wall seconds and peak memory.

``export_peak_mb`` is the peak resident memory minus the memory held before the export
(imports, data, draws); ``peak_rss_mb`` the whole process's peak. Goals (issue 20):
``export_peak_mb`` of ``lp`` below 300 MB, ``no_scoring`` under 2 s.

Run: ``python -m benchmarks.export [--quick] [--out FILE]`` (``--quick``: 16 chains x 250
draws).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

ROWS, COEFS = 5000, 25
GOAL_PEAK_MB, GOAL_NO_SCORING_S = 300.0, 2.0


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _case(case: str, chains: int, draws: int, seed: int) -> dict:
    """One measurement, in this process (called in a subprocess)."""
    import pyro
    import pyro.distributions as dist
    import torch

    from pyro_dgm.compare import from_mcmc
    from pyro_dgm.compare._scoring import DEFAULT_SCORE_MEMORY_MB

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.ones(ROWS, 1, dtype=torch.float64),
                   torch.randn(ROWS, COEFS - 1, generator=g, dtype=torch.float64)], dim=1)
    true = torch.randn(COEFS, generator=g, dtype=torch.float64)
    y = x @ true + 0.5 * torch.randn(ROWS, generator=g, dtype=torch.float64)

    def model(x, y):
        sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
        beta = pyro.sample("beta", dist.Normal(x.new_zeros(COEFS), 2.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal((x * beta).sum(-1), sigma), obs=y)

    fit = torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.squeeze(-1)
    resid = float((y - x @ fit).std())
    samples = {
        "sigma": resid + 0.005 * torch.randn(chains, draws, generator=g, dtype=torch.float64),
        "beta": fit + 0.007 * torch.randn(chains, draws, COEFS, generator=g,
                                          dtype=torch.float64),
    }

    class Finished:  # what from_mcmc reads of a finished pyro.infer.MCMC run
        kernel = type("Kernel", (), {"model": staticmethod(model)})()
        _args, _kwargs, _diagnostics = (x, y), {}, []

        def get_samples(self, group_by_chain=False):
            return samples

    run = Finished()
    options = {"no_scoring": {"log_likelihood": False, "lp": False},
               "lp": {"log_likelihood": False}}[case]
    small = Finished()
    small.get_samples = lambda group_by_chain=False: {k: v[:1, :4] for k, v in samples.items()}
    from_mcmc(small, log_likelihood=False)  # load what the first export loads
    before = _rss_mb()
    times = []
    for _ in range(3 if case == "no_scoring" else 1):
        start = time.perf_counter()
        idata = from_mcmc(run, **options)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"wall_s": statistics.median(times), "rss_before_mb": round(before, 1),
           "peak_rss_mb": round(peak, 1), "export_peak_mb": round(peak - before, 1),
           "torch_threads": torch.get_num_threads()}
    if case == "lp":
        out["memory_budget_mb"] = DEFAULT_SCORE_MEMORY_MB
        out["lp_finite"] = bool(torch.isfinite(torch.as_tensor(
            idata.sample_stats["lp"].values)).all())
    return out


def main(argv=None) -> dict:
    import torch

    from benchmarks._common import emit, parser

    torch.set_num_threads(1)
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--case", default=None, help=argparse_hidden())
    args = p.parse_args(argv)
    chains, draws = (16, 250) if args.quick else (64, 1000)
    if args.case:  # the subprocess
        print(json.dumps(_case(args.case, chains, draws, args.seed)))
        return {}
    results = {}
    for case in ("no_scoring", "lp"):
        cmd = [sys.executable, "-m", "benchmarks.export", "--case", case, "--seed",
               str(args.seed)] + (["--quick"] if args.quick else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[case] = json.loads(done.stdout.strip().splitlines()[-1])
    ratios = {
        "lp_export_peak_vs_goal_300mb": results["lp"]["export_peak_mb"] / GOAL_PEAK_MB,
        "no_scoring_time_vs_goal_2s": results["no_scoring"]["wall_s"] / GOAL_NO_SCORING_S,
    }
    settings = {"chains": chains, "draws": draws, "rows": ROWS, "parameters": COEFS + 1,
                "dtype": "float64", "torch_threads": 1}
    return emit("export", results, ratios, settings=settings, device=args.device, out=args.out)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
