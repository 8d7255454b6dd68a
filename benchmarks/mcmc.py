"""Benchmark: MCMC on Bayesian logistic regression, minimum ESS per second.

Model: scikit-learn's breast_cancer data (569 rows), the first 10 features standardized plus
an intercept, ``beta ~ N(0, 2.5^2 I_11)``, ``y_n ~ Bernoulli(logit^-1(x_n . beta))``. The
leading features (radius, perimeter, area) are almost collinear, so the posterior is strongly
correlated.

Figure: minimum over the 11 coefficients of the bulk ESS (ArviZ, all chains together) per
second of wall time of the whole run, warm-up included, for

- ``pyro_rw``: Pyro's ``RandomWalkKernel``, one chain, 4,000 draws after 2,000 warm-up;
- ``pyro_nuts``: Pyro's ``NUTS``, one chain, 1,000 draws after 1,000 warm-up;
- ``ours_mh``: :class:`pyro_dgm.inference.RandomWalkMH`, 64 chains in one process
  (``chain_method="vectorized"``), 1,000 draws each after 1,000 warm-up.

Also timed: one vectorized MH step for the 64 chains against one batched evaluation of the
potential energy for the same chains (after warm-up), and the error of the posterior means
against a long NUTS-free reference (the pooled mean of our run), in posterior sds.

Run: ``python -m benchmarks.mcmc [--quick] [--out FILE]``. Goals (issue 3): ``ours_mh`` at
least 100x ``pyro_rw`` and 10x ``pyro_nuts``; step time at most 2x the potential evaluation.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC as PyroMCMC
from pyro.infer import NUTS
from pyro.infer.mcmc import RandomWalkKernel

from benchmarks._common import emit, parser, sync, time_per_call
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.data import load_tabular
from pyro_dgm.inference import MCMC, RandomWalkMH

PRIOR_SCALE = 2.5


def logistic_regression(X, y=None):
    beta = pyro.sample("beta", dist.Normal(X.new_zeros(X.shape[-1]), PRIOR_SCALE).to_event(1))
    with pyro.plate("data", X.shape[0]):
        # (X * beta).sum(-1) broadcasts over a leading chain dimension; X @ beta would not
        pyro.sample("y", dist.Bernoulli(logits=(X * beta).sum(-1)), obs=y)


def load_data(device="cpu", dtype=torch.float64):
    x, target = load_tabular("breast_cancer", max_columns=10, return_target=True, dtype=dtype,
                             device=device)
    X = torch.cat([torch.ones_like(x[:, :1]), x], dim=1)
    y = torch.as_tensor(np.asarray(target), dtype=dtype, device=device)
    return X, y


def min_ess(beta: torch.Tensor) -> float:
    """Minimum bulk ESS over coefficients of draws ``(chains, draws, D)``."""
    ess = arviz.ess(arviz.convert_to_dataset({"beta": beta.cpu().numpy()}))["beta"].values
    return float(np.min(ess))


def run(mcmc, *args, device="cpu"):
    sync(device)
    start = time.perf_counter()
    mcmc.run(*args)
    sync(device)
    wall = time.perf_counter() - start
    beta = mcmc.get_samples(group_by_chain=True)["beta"]
    ess = min_ess(beta)
    return {"wall_s": wall, "min_ess": ess, "ess_per_s": ess / wall,
            "draws": int(beta.shape[0] * beta.shape[1])}, beta


def interleaved_times(fn_a, fn_b, *, repeat: int, rounds: int, device="cpu"):
    """Median seconds per call of ``fn_a`` and ``fn_b``, timed in alternating rounds (so load
    changes on a shared machine hit both alike), and the median of the per-round ratios."""
    times_a, times_b = [], []
    for fn in (fn_a, fn_b):
        time_per_call(fn, repeat=repeat, warmup=5, rounds=1, device=device)
    for _ in range(rounds):
        times_a.append(time_per_call(fn_a, repeat=repeat, warmup=0, rounds=1, device=device))
        times_b.append(time_per_call(fn_b, repeat=repeat, warmup=0, rounds=1, device=device))
    ratios = [a / b for a, b in zip(times_a, times_b, strict=True)]
    return float(np.median(times_a)), float(np.median(times_b)), float(np.median(ratios))


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for every method (tiny tensors: 1 is fastest)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    quick = args.quick
    X, y = load_data(args.device)
    sizes = {
        "pyro_rw": (1000, 500) if quick else (4000, 2000),
        "pyro_nuts": (100, 100) if quick else (1000, 1000),
        "ours_mh": (500, 500) if quick else (1000, 1000),
    }
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n, w = sizes["pyro_rw"]
        results["pyro_rw"], _ = run(PyroMCMC(RandomWalkKernel(logistic_regression), n,
                                             warmup_steps=w, disable_progbar=True), X, y)
        n, w = sizes["pyro_nuts"]
        results["pyro_nuts"], nuts_beta = run(PyroMCMC(NUTS(logistic_regression), n,
                                                       warmup_steps=w, disable_progbar=True), X, y)
    n, w = sizes["ours_mh"]
    kernel = RandomWalkMH(logistic_regression)
    mcmc = MCMC(kernel, n, warmup_steps=w, num_chains=args.chains, chain_method="vectorized",
                disable_progbar=True)
    results["ours_mh"], ours_beta = run(mcmc, X, y, device=args.device)
    results["ours_mh"]["chains"] = args.chains
    results["ours_mh"]["acceptance_rate"] = float(np.mean(
        [d["acceptance rate"] for d in mcmc._diagnostics]))

    # one step vs one batched potential evaluation, same 64 chains, after warm-up
    params = kernel.sample(kernel.initial_params)
    holder = {"params": params}

    def step():
        holder["params"] = kernel.sample(holder["params"])

    with pyro.validation_enabled(False):
        t_step, t_pot, ratio = interleaved_times(
            step, lambda: kernel.potential_energy(holder["params"]), repeat=20,
            rounds=9 if quick else 31, device=args.device)
    results["step_s"] = t_step
    results["potential_s"] = t_pot

    # agreement of the posterior means (NUTS vs ours), in posterior sds
    sd = ours_beta.reshape(-1, ours_beta.shape[-1]).std(0)
    diff = (nuts_beta.reshape(-1, sd.shape[0]).mean(0) - ours_beta.reshape(-1, sd.shape[0])
            .mean(0)).abs() / sd
    results["max_mean_diff_nuts_vs_ours_sd"] = float(diff.max())

    ratios = {
        "ours_mh_vs_pyro_rw_ess_per_s": results["ours_mh"]["ess_per_s"]
        / results["pyro_rw"]["ess_per_s"],
        "ours_mh_vs_pyro_nuts_ess_per_s": results["ours_mh"]["ess_per_s"]
        / results["pyro_nuts"]["ess_per_s"],
        "step_vs_potential_time": ratio,
    }
    settings = {"quick": quick, "seed": args.seed, "threads": args.threads,
                "draws_warmup": {k: list(v) for k, v in sizes.items()},
                "chains": {"pyro_rw": 1, "pyro_nuts": 1, "ours_mh": args.chains},
                "goals": {"ours_mh_vs_pyro_rw_ess_per_s": ">= 100",
                          "ours_mh_vs_pyro_nuts_ess_per_s": ">= 10",
                          "step_vs_potential_time": "<= 2"}}
    return emit("mcmc", results, ratios, settings=settings, device=args.device, out=args.out)


if __name__ == "__main__":
    main()
