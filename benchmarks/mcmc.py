"""Benchmark: MCMC on two posteriors, minimum ESS per second against Pyro's best NUTS.

Targets:

- ``logreg``: scikit-learn's breast_cancer data (569 rows), the first 10 features
  standardized plus an intercept, ``beta ~ N(0, 2.5^2 I_11)``, ``y_n ~ Bernoulli(logit^-1(x_n
  . beta))``; the leading features are almost collinear (a strongly correlated posterior);
- ``fa``: the default posterior of ``pyro-dgm compare`` (factor analysis of the wine data,
  ``MODELS.get("fa").build(default_settings())``, 51 parameters).

Figure: minimum over all coordinates of the bulk ESS (ArviZ, all chains together) per second
of wall time of the whole run, warm-up included (``ess_per_s``), and per second of the
process's CPU time (``ess_per_cpu_s``: every sampler runs on one thread, so on a machine
shared with other jobs the CPU seconds stand in for the wall time of a quiet one), for

- ``pyro_nuts_<mass>_<jit>``: Pyro's ``NUTS``, one chain, diagonal or dense mass
  (``full_mass``), with or without ``jit_compile``; the best of them is *the* baseline
  (``pyro_nuts_best``);
- ``pyro_rw``: Pyro's ``RandomWalkKernel`` (logistic regression only);
- ``ours_mh``: :class:`pyro_dgm.inference.RandomWalkMH`, 64 chains in one process;
- ``ours_hmc``: :class:`pyro_dgm.inference.ChEESHMC`, 64 chains in lockstep.

Chain starts (``settings.starts``): on ``logreg`` the samplers' own (prior draws for ours,
the prior median for Pyro's); on ``fa`` ``ours_mh`` and ``ours_hmc`` start as the
comparison method ``hmc`` does, at the jittered MAP point
(:func:`pyro_dgm.compare.methods.starts.jittered_starts`: the best of 4 L-BFGS MAP fits plus
N(0, 0.1^2) noise per chain in unconstrained space; ``ours_hmc`` also under the Laplace
metric at that point, :func:`pyro_dgm.compare.methods.samplers.hmc_kernel`), and the MAP
fit's (and Hessian's) time counts in their times (``map_s``); Pyro's NUTS starts there
too (``init_to_jittered`` around the same kind of MAP fit, also timed), as the comparison
method ``nuts`` does: from the prior median its chain can sit in a minor mode of the FA
posterior.

Also: gradient evaluations per effective sample of ``ours_hmc`` (leapfrog steps of all
chains, warm-up included, over min ESS); one ChEES-HMC chain step against one batched
potential-and-gradient evaluation times the leapfrog steps of that step, and one MH step
against one batched potential evaluation (64 chains, after warm-up, timed in alternating
rounds); the largest difference of posterior means, NUTS vs ours, in posterior sds.

Run: ``python -m benchmarks.mcmc [--quick] [--targets logreg,fa] [--out FILE]``
(``--quick``: the best NUTS configuration only, short runs, under a minute). Goals (issue
14): ``ours_hmc`` at least 10x the best Pyro NUTS on both targets; a chain step at most 1.3x
the potential-and-gradient evaluations it makes.
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
from pyro_dgm.compare import MODELS, default_settings
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.compare.methods.samplers import hmc_kernel
from pyro_dgm.compare.methods.starts import init_to_jittered, jittered_starts, map_start
from pyro_dgm.compare.settings import Problem
from pyro_dgm.data import load_tabular
from pyro_dgm.inference import MCMC, ChEESHMC, RandomWalkMH

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


def flat_draws(samples: dict) -> torch.Tensor:
    """All sites' draws as ``(chains, draws, D)``."""
    return torch.cat([v.reshape(v.shape[:2] + (-1,)) for _, v in sorted(samples.items())], -1)


def min_ess(draws: torch.Tensor) -> float:
    """Minimum bulk ESS over the coordinates of draws ``(chains, draws, D)``."""
    ess = arviz.ess(arviz.convert_to_dataset({"x": draws.cpu().numpy()}))["x"].values
    return float(np.min(ess))


def clock() -> tuple[float, float]:
    """Wall and process CPU seconds now (one thread: CPU seconds stand in for the wall time
    of a quiet machine on a shared one)."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    now = clock()
    return now[0] - start[0], now[1] - start[1]


def map_init(kernel, problem: Problem, chains: int, device="cpu") -> tuple[float, float]:
    """Set ``kernel.initial_params`` to jittered MAP starts; return the (wall, CPU) seconds
    it took."""
    sync(device)
    start = clock()
    init, _ = jittered_starts(problem, default_settings(device=device, progress=False), chains)
    if init is None:
        raise ValueError(f"{problem.name}: no MAP start")
    kernel.initial_params = init
    sync(device)
    return since(start)


def map_start_point(problem: Problem, device="cpu") -> dict:
    """The comparison's MAP point (best of 4 L-BFGS fits) of ``problem``."""
    return map_start(problem, default_settings(device=device, progress=False))


def run(mcmc, problem, device="cpu", extra: tuple[float, float] = (0.0, 0.0)):
    """Run ``mcmc``; ``extra`` (wall, CPU seconds of e.g. a MAP fit for the start) counts in
    its times."""
    sync(device)
    start = clock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.run(*problem.args, **problem.kwargs)
    sync(device)
    wall, cpu = since(start)
    wall, cpu = wall + extra[0], cpu + extra[1]
    draws = flat_draws(mcmc.get_samples(group_by_chain=True))
    ess = min_ess(draws)
    return {"wall_s": wall, "cpu_s": cpu, "min_ess": ess, "ess_per_s": ess / wall,
            "ess_per_cpu_s": ess / cpu, "draws": int(draws.shape[0] * draws.shape[1])}, draws


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


def logreg_problem(device="cpu") -> Problem:
    X, y = load_data(device)
    return Problem("logreg", logistic_regression, (X, y), jit_compile=True)


def fa_problem(device="cpu") -> Problem:
    return MODELS.get("fa").build(default_settings(device=device, progress=False))


#: the targets by name (``--targets``)
TARGETS = {"logreg": logreg_problem, "fa": fa_problem}
#: how ``ours_mh`` and ``ours_hmc`` start on each target: ``prior`` (the kernels' own
#: prior draws) or ``map`` (jittered MAP, as the comparison method ``hmc``)
STARTS = {"logreg": "prior", "fa": "map"}

NUTS_CONFIGS = [(full, jit) for full in (False, True) for jit in (False, True)]


def nuts_name(full: bool, jit: bool) -> str:
    return f"pyro_nuts_{'dense' if full else 'diag'}_{'jit' if jit else 'nojit'}"


def bench_target(problem: Problem, sizes: dict, configs, chains: int, quick: bool,
                 device: str, with_rw: bool, map_start: bool) -> tuple[dict, dict]:
    results = {}
    for full, jit in configs:
        n, w = sizes["pyro_nuts"]
        map_s, init = (0.0, 0.0), {}
        if map_start:
            start = clock()
            point = map_start_point(problem, device)
            map_s = since(start)
            init = {"init_strategy": init_to_jittered(point)}
        kernel = NUTS(problem.model, full_mass=full, jit_compile=jit, ignore_jit_warnings=True,
                      max_plate_nesting=problem.max_plate_nesting, **init)
        results[nuts_name(full, jit)], nuts_draws = run(
            PyroMCMC(kernel, n, warmup_steps=w, disable_progbar=True), problem, extra=map_s)
        results[nuts_name(full, jit)].update(full_mass=full, jit_compile=jit, map_s=map_s[0])
    if with_rw:
        n, w = sizes["pyro_rw"]
        results["pyro_rw"], _ = run(PyroMCMC(RandomWalkKernel(problem.model), n,
                                             warmup_steps=w, disable_progbar=True), problem)
    nuts = [k for k in results if k.startswith("pyro_nuts_")]
    best = max(nuts, key=lambda k: results[k]["ess_per_s"])
    best_cpu = max(nuts, key=lambda k: results[k]["ess_per_cpu_s"])
    results["pyro_nuts_best"], results["pyro_nuts_best_cpu"] = best, best_cpu

    n, w = sizes["ours_mh"]
    mh = RandomWalkMH(problem.model, max_plate_nesting=problem.max_plate_nesting)
    map_s = map_init(mh, problem, chains, device) if map_start else (0.0, 0.0)
    mcmc = MCMC(mh, n, warmup_steps=w, num_chains=chains, chain_method="vectorized",
                disable_progbar=True)
    results["ours_mh"], _ = run(mcmc, problem, device, extra=map_s)
    results["ours_mh"].update(chains=chains, map_s=map_s[0])

    n, w = sizes["ours_hmc"]
    map_s = (0.0, 0.0)
    if map_start:  # as the comparison method hmc: jittered MAP starts, Laplace metric
        start = clock()
        hmc, _ = hmc_kernel(problem, default_settings(device=device, progress=False), chains)
        map_s = since(start)
    else:
        hmc = ChEESHMC(problem.model, max_plate_nesting=problem.max_plate_nesting)
    steps = []
    mcmc = MCMC(hmc, n, warmup_steps=w, num_chains=chains, chain_method="vectorized",
                disable_progbar=True,
                hook_fn=lambda k, p, stage, i: steps.append(k.adapter.num_steps(
                    k._t - 1, k._ratio if k._ratio is not None else k._lagged.read())))
    results["ours_hmc"], hmc_draws = run(mcmc, problem, device, extra=map_s)
    grads = chains * (sum(steps) + 1)
    results["ours_hmc"].update(chains=chains, map_s=map_s[0], step_size=hmc.step_size,
                               trajectory_length=hmc.trajectory_length,
                               grad_evals=grads,
                               grad_evals_per_ess=grads / results["ours_hmc"]["min_ess"])

    # one chain step vs the batched potential(-and-gradient) evaluations it makes
    holder = {"hmc": hmc.sample(hmc._last), "mh": mh.sample(mh._last)}
    z = hmc._chain.position[0]

    def hmc_step():
        holder["hmc"] = hmc.sample(holder["hmc"])

    def mh_step():
        holder["mh"] = mh.sample(holder["mh"])

    before = len(hmc._records)
    rounds = 3 if quick else 15
    with pyro.validation_enabled(False):
        t_step, t_grad, _ = interleaved_times(hmc_step, lambda: hmc._potential_and_grad(z),
                                              repeat=5, rounds=rounds, device=device)
        t_mh, t_pot, mh_ratio = interleaved_times(
            mh_step, lambda: mh.potential_energy(holder["mh"]), repeat=20, rounds=rounds,
            device=device)
    mean_steps = float(np.mean([r[3] for r in hmc._records[before:]]))
    results["hmc_step_s"], results["grad_s"] = t_step, t_grad
    results["hmc_mean_leapfrog_steps"] = mean_steps
    results["mh_step_s"], results["potential_s"] = t_mh, t_pot

    sd = hmc_draws.reshape(-1, hmc_draws.shape[-1]).std(0)
    diff = (nuts_draws.reshape(-1, sd.shape[0]).mean(0)
            - hmc_draws.reshape(-1, sd.shape[0]).mean(0)).abs() / sd
    results["max_mean_diff_nuts_vs_hmc_sd"] = float(diff.max())
    base, base_cpu = results[best]["ess_per_s"], results[best_cpu]["ess_per_cpu_s"]
    ratios = {
        "ours_hmc_vs_best_pyro_nuts_ess_per_s": results["ours_hmc"]["ess_per_s"] / base,
        "ours_hmc_vs_best_pyro_nuts_ess_per_cpu_s": (results["ours_hmc"]["ess_per_cpu_s"]
                                                     / base_cpu),
        "ours_mh_vs_best_pyro_nuts_ess_per_s": results["ours_mh"]["ess_per_s"] / base,
        "hmc_step_vs_grad_times_leapfrog": t_step / (mean_steps * t_grad),
        "mh_step_vs_potential_time": mh_ratio,
    }
    if with_rw:
        ratios["ours_mh_vs_pyro_rw_ess_per_s"] = (results["ours_mh"]["ess_per_s"]
                                                 / results["pyro_rw"]["ess_per_s"])
    return results, ratios


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for every method (tiny tensors: 1 is fastest)")
    p.add_argument("--targets", default="logreg,fa",
                   help="comma-separated targets to run, of: " + ", ".join(TARGETS))
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        p.error(f"--targets: unknown {unknown}; choose from {', '.join(TARGETS)}")
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    quick = args.quick
    sizes = {
        "logreg": {"pyro_rw": (500, 250) if quick else (4000, 2000),
                   "pyro_nuts": (100, 100) if quick else (1000, 1000),
                   "ours_mh": (300, 300) if quick else (1000, 1000),
                   "ours_hmc": (150, 150) if quick else (500, 500)},
        "fa": {"pyro_nuts": (30, 30) if quick else (500, 500),
               "ours_mh": (100, 100) if quick else (1000, 1000),
               "ours_hmc": (60, 60) if quick else (500, 500)},
    }
    configs = {"logreg": [(True, True)] if quick else NUTS_CONFIGS,
               "fa": [(True, True)] if quick else [(False, False), (True, True)]}
    results, ratios = {}, {}
    for name in targets:
        problem = TARGETS[name](args.device)
        results[name], r = bench_target(problem, sizes[name], configs[name], args.chains,
                                        quick, args.device, with_rw=name == "logreg",
                                        map_start=STARTS[name] == "map")
        ratios.update({f"{name}_{k}": v for k, v in r.items()})
    settings = {"quick": quick, "seed": args.seed, "threads": args.threads,
                "chains": args.chains, "targets": targets,
                "starts": {t: ("every sampler: jittered MAP (best of 4 L-BFGS fits + "
                               "N(0, 0.1^2) unconstrained; the MAP fit's time is in wall_s, "
                               "and in map_s); ours_hmc also from the Laplace metric at "
                               "the MAP point, T0 = 2.25 (hmc_kernel)") if STARTS[t] == "map"
                           else
                           "ours: prior draws; NUTS: prior median" for t in targets},
                "draws_warmup": {t: {k: list(v) for k, v in sizes[t].items()} for t in targets},
                "nuts_configs": {t: [nuts_name(*c) for c in configs[t]] for t in targets},
                "goals": {"<target>_ours_hmc_vs_best_pyro_nuts_ess_per_s": ">= 10",
                          "<target>_hmc_step_vs_grad_times_leapfrog": "<= 1.3"}}
    return emit("mcmc", results, ratios, settings=settings, device=args.device, out=args.out)


if __name__ == "__main__":
    main()
