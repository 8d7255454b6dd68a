r"""Reference draws of our own for a bundle posterior that has none, written into the bundle.

posteriordb's reference draws are Stan NUTS runs (10 chains x 10,000 kept draws, thinned to
1,000 per chain, accepted by R-hat and ESS); the bundle stores them thinned to 10 x 100
(``dev/vendor_posteriordb.py``). Where posteriordb's snapshot lacks them
(``mcycle_gp-accel_gp``), this script makes them with pyro_dgm's ChEES-HMC
(:class:`~pyro_dgm.inference.ChEESHMC`, many chains in lockstep) and stores them in the same
format, labelled as ours (the manifest's ``reference_source``), never as posteriordb's.

Procedure, per posterior and per seed (``--seeds``, two by default: independent runs):

1. **Dispersed starts.** Full-rank ADVI (``AutoMultivariateNormal``, the comparison's SVI
   loop) gives a Gaussian :math:`\mathcal N(m, LL^\top)` in the unconstrained space;
   ``--candidates`` x ``--chains`` points are drawn from the *overdispersed*
   :math:`\mathcal N(m, k^2 LL^\top)`, :math:`k` = ``--inflation`` (Gelman & Rubin 1992),
   and the chains start from the first of them whose potential :math:`U = -\log p(x,
   T(u)) - \log|J_T(u)|` is at most :math:`\operatorname{median}U_{k=1} + (k^2 - 1) D`,
   :math:`D` the unconstrained dimension (for a Gaussian posterior the overdispersed draws
   have :math:`E U - E U_{k=1} = (k^2 - 1) D / 2`: the cut drops the draws far past the
   approximation, in the tails where it is wrong). Why not the MAP or uniform(-2, 2)
   starts: see docs/posteriordb.md (on ``accel_gp`` chains started there do not move).
2. **ChEES-HMC**, dense metric (adapted from the identity), ``--chains`` chains x
   (``--warmup`` + ``--samples``).
3. **Checks** (ArviZ, every scalar element): rank-normalized split R-hat <= ``--max-rhat``,
   bulk and tail ESS >= ``--min-ess``, on each run; and the runs agree: for every element
   :math:`|\bar x_a - \bar x_b| / \sqrt{\mathrm{mcse}_a^2 + \mathrm{mcse}_b^2}` below
   ``--max-z`` (default 4.5: with ~70 elements and two runs, a two-sided normal tail of
   :math:`7\times10^{-6}` each, so a false alarm has probability ~5e-4).
4. **Stored draws:** 10 chains x 100, the chains spread evenly over all runs' chains (five
   from each of two runs), each thinned evenly from its ``--samples`` draws — the layout of
   posteriordb's references in the bundle (``reference.<param>``, ``(10, 100, *shape)``).
   The manifest entry gets ``has_reference: true``, ``reference_shape`` and
   ``reference_source`` (method, settings, checks, date). Nothing is written unless every
   check passes (``--force`` writes anyway and says so in ``reference_source``).

Usage (the bundle's ``manifest.json`` is backed up to ``manifest.orig.json`` first)::

    PYRO_DGM_POSTERIORDB=BUNDLE python dev/reference_draws.py [NAME ...] \
        --chains 64 --warmup 1000 --samples 1000 --json report.json

Without ``NAME`` it fills every bundle posterior that has no reference draws.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import pyro
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, init_to_median

from pyro_dgm.compare.export import from_mcmc
from pyro_dgm.compare.methods.fitting import fit_svi
from pyro_dgm.compare.problems.posteriordb import posteriordb_problem
from pyro_dgm.compare.settings import default_settings
from pyro_dgm.data import posteriordb as pdb
from pyro_dgm.inference.chain_model import ChainModel
from pyro_dgm.inference.chees import ChEESHMC
from pyro_dgm.inference.mcmc import MCMC

__all__ = ["agreement", "check", "dispersed_starts", "run_chains", "stored_draws",
           "write_reference"]

STORED_CHAINS, STORED_DRAWS = 10, 100  # the bundle's layout of a reference


def dispersed_starts(problem, settings, chains: int, inflation: float = 2.0,
                     candidates: int = 8) -> tuple[dict, dict]:
    """Unconstrained starts ``(chains, *shape)`` per site from overdispersed full-rank ADVI
    (module docstring, step 1), and a record of how they were found."""
    guide = AutoMultivariateNormal(problem.model, init_loc_fn=init_to_median, init_scale=0.05)
    losses = fit_svi(problem, guide, settings, desc="advi")
    loc, tril = guide.loc.detach(), guide.scale_tril.detach()
    dim = loc.shape[-1]
    layout = [(name, torch.Size(guide._unconstrained_shapes[name]))
              for name, site in guide.prototype_trace.iter_stochastic_nodes()
              if not site["is_observed"]]
    n = chains * candidates
    cm = ChainModel(problem.model, problem.args, problem.kwargs, n,
                    max_plate_nesting=problem.max_plate_nesting)

    def potential(flat: torch.Tensor) -> torch.Tensor:
        values, ladj, pos = {}, 0.0, 0
        for name, shape in layout:
            u = flat[:, pos:pos + shape.numel()].reshape((n,) + shape)
            pos += shape.numel()
            x, jac = cm.constrain(name, u)
            values[name] = x.reshape(cm.sites[name].padded)
            ladj = ladj + jac.reshape(n, -1).sum(-1)
        with torch.no_grad():
            out = -(cm.log_joint(values) + ladj)
        return torch.where(torch.isfinite(out), out, torch.full_like(out, math.inf))

    eps = torch.randn(n, dim, dtype=loc.dtype, device=loc.device)
    base = potential(loc + eps @ tril.mT)
    draws = loc + inflation * torch.randn_like(eps) @ tril.mT
    energy = potential(draws)
    cut = float(base.median()) + (inflation ** 2 - 1.0) * dim
    keep = torch.nonzero(energy <= cut).reshape(-1)
    if keep.numel() < chains:
        raise RuntimeError(f"starts: only {keep.numel()} of {n} overdispersed draws have "
                           f"U <= {cut:.1f}; raise --candidates")
    chosen = draws[keep[:chains]]
    init, pos = {}, 0
    for name, shape in layout:
        init[name] = chosen[:, pos:pos + shape.numel()].reshape((chains,) + shape)
        pos += shape.numel()
    record = {"advi_steps": len(losses), "advi_final_loss": float(losses[-1]),
              "inflation": inflation, "candidates": n, "kept": int(keep.numel()),
              "potential_cut": cut, "potential_median_k1": float(base.median()),
              "potential_start_range": [float(energy[keep[:chains]].min()),
                                        float(energy[keep[:chains]].max())]}
    return init, record


def run_chains(problem, init: dict, chains: int, warmup: int, samples: int,
               progress: bool = False):
    """ChEES-HMC (dense metric) from ``init``; the ``InferenceData`` and the kernel's
    adapted settings."""
    kernel = ChEESHMC(problem.model, max_plate_nesting=problem.max_plate_nesting)
    kernel.initial_params = init
    kernel.compile_potential = True
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, num_chains=chains,
                chain_method="vectorized", disable_progbar=not progress)
    mcmc.run(*problem.args, **problem.kwargs)
    diagnostics = kernel.chain_diagnostics()
    idata = from_mcmc(mcmc, log_likelihood=False)
    accept = [d["acceptance rate"] for d in diagnostics]
    record = {"step_size": kernel.step_size, "trajectory_length": kernel.trajectory_length,
              "mean_leapfrog_steps": float(idata.sample_stats["num_steps"].mean()),
              "accept_mean": float(np.mean(accept)), "accept_min_chain": float(np.min(accept)),
              "divergences": int(sum(len(d["divergences"]) for d in diagnostics))}
    return idata, record


def check(idata, var_names: list[str]) -> dict:
    """Worst R-hat (rank-normalized split) and least bulk/tail ESS over every element."""
    import arviz as az

    summary = az.summary(idata, var_names=var_names, kind="diagnostics", round_to="none")
    worst = lambda col, f: (float(f(summary[col])), str(getattr(summary[col], # noqa: E731
                                                           "idx" + f.__name__)()))
    return {"max_rhat": worst("r_hat", np.max), "min_ess_bulk": worst("ess_bulk", np.min),
            "min_ess_tail": worst("ess_tail", np.min), "elements": len(summary)}


def agreement(a, b, var_names: list[str]) -> dict:
    """Largest z-score of the difference of two runs' means over every element."""
    import arviz as az

    sa = az.summary(a, var_names=var_names, stat_focus="mean", kind="all", round_to="none")
    sb = az.summary(b, var_names=var_names, stat_focus="mean", kind="all", round_to="none")
    z = (sa["mean"] - sb["mean"]).abs() / np.sqrt(sa["mcse_mean"] ** 2 + sb["mcse_mean"] ** 2)
    return {"max_z": float(z.max()), "element": str(z.idxmax()),
            "sd_ratio_range": [float((sa["sd"] / sb["sd"]).min()),
                               float((sa["sd"] / sb["sd"]).max())]}


def stored_draws(runs: list, var_names: list[str]) -> dict[str, np.ndarray]:
    """10 chains x 100 draws per parameter: chains spread evenly over all runs' chains, each
    thinned evenly (module docstring, step 4)."""
    pooled = {v: np.concatenate([r.posterior[v].values for r in runs], axis=0)
              for v in var_names}
    total, draws = next(iter(pooled.values())).shape[:2]
    if total < STORED_CHAINS or draws < STORED_DRAWS:
        raise ValueError(f"samples: need >= {STORED_CHAINS} chains x {STORED_DRAWS} draws, "
                         f"got {total} x {draws}")
    chains = np.linspace(0, total - 1, STORED_CHAINS).round().astype(int)
    if len(runs) > 1:  # the same number from each run
        per = STORED_CHAINS // len(runs)
        size = total // len(runs)
        chains = np.concatenate([i * size + np.linspace(0, size - 1, per).round().astype(int)
                                 for i in range(len(runs))])
    steps = np.linspace(0, draws - 1, STORED_DRAWS).round().astype(int)
    return {v: np.ascontiguousarray(a[chains][:, steps], dtype=np.float64)
            for v, a in pooled.items()}


def write_reference(directory, name: str, arrays: dict[str, np.ndarray], source: str) -> None:
    """Add ``reference.<param>`` to ``<name>.npz`` and mark the manifest entry (backing the
    manifest up to ``manifest.orig.json`` once)."""
    from pathlib import Path

    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    backup = directory / "manifest.orig.json"
    if not backup.exists():
        shutil.copy2(manifest_path, backup)
    params = pdb.posteriordb_parameters(name)
    for param, spec in params.items():
        expected = (STORED_CHAINS, STORED_DRAWS) + spec.shape
        if arrays[param].shape != expected or not np.isfinite(arrays[param]).all():
            raise ValueError(f"{name}: reference {param!r} has shape {arrays[param].shape} "
                             f"(expected {expected}) or non-finite values")
    npz = directory / f"{name}.npz"
    with np.load(npz) as old:
        content = {k: old[k] for k in old.files if not k.startswith("reference.")}
    content.update({f"reference.{k}": arrays[k] for k in params})
    tmp = directory / f".{name}.tmp.npz"
    np.savez_compressed(tmp, **content)
    os.replace(tmp, npz)
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["posteriors"][name]
    entry.update(has_reference=True, reference_shape=[STORED_CHAINS, STORED_DRAWS],
                 reference_source=source)
    tmp = directory / ".manifest.tmp.json"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, manifest_path)
    readme = directory / "README.md"
    note = (f"\n{name}: its reference draws are NOT posteriordb's but pyro_dgm's own "
            "(dev/reference_draws.py); manifest.json's reference_source says how they were "
            "made.\n")
    if readme.is_file() and note not in readme.read_text():
        with readme.open("a") as f:
            f.write(note)
    pdb._manifest.cache_clear()  # the loader caches what it read; it changed
    pdb._arrays.cache_clear()


def reference_for(name: str, args) -> dict:
    """Run, check and (if every check passes, or ``--force``) store one posterior."""
    settings = default_settings(progress=False, seed=args.seeds[0])
    problem = posteriordb_problem(name, settings)
    var_names = list(pdb.posteriordb_parameters(name))
    report = {"posterior": name, "runs": []}
    runs = []
    for seed in args.seeds:
        pyro.set_rng_seed(seed)
        start = time.time()
        init, starts = dispersed_starts(problem, settings, args.chains, args.inflation,
                                        args.candidates)
        idata, kernel = run_chains(problem, init, args.chains, args.warmup, args.samples,
                                   args.progress)
        runs.append(idata)
        if args.save:  # every draw and sample stat, for a closer look (e.g. divergences)
            os.makedirs(args.save, exist_ok=True)
            idata.to_netcdf(os.path.join(args.save, f"{name}_seed{seed}.nc"))
        report["runs"].append({"seed": seed, "starts": starts, "kernel": kernel,
                               "checks": check(idata, var_names),
                               "wall_s": round(time.time() - start, 1)})
        print(json.dumps(report["runs"][-1]), file=sys.stderr, flush=True)
    if len(runs) > 1:
        report["agreement"] = agreement(runs[0], runs[1], var_names)
    arrays = stored_draws(runs, var_names)
    import arviz as az

    report["stored_checks"] = check(az.from_dict(posterior=arrays), var_names)
    failures = [f"seed {r['seed']}: {k} {r['checks'][k][0]:.4g} ({r['checks'][k][1]})"
                for r in report["runs"] for k, bad in (
                    ("max_rhat", lambda x: x > args.max_rhat),
                    ("min_ess_bulk", lambda x: x < args.min_ess),
                    ("min_ess_tail", lambda x: x < args.min_ess)) if bad(r["checks"][k][0])]
    if "agreement" in report and report["agreement"]["max_z"] > args.max_z:
        failures.append(f"runs disagree: z {report['agreement']['max_z']:.2f} "
                        f"({report['agreement']['element']})")
    report["failures"] = failures
    worst = report["runs"]
    source = (f"pyro_dgm ChEES-HMC (dev/reference_draws.py), NOT posteriordb's: "
              f"{len(args.seeds)} independent runs (seeds {','.join(map(str, args.seeds))}) "
              f"x {args.chains} chains x ({args.warmup} warm-up + {args.samples} draws), "
              f"dense metric, starts from full-rank ADVI overdispersed x{args.inflation}; "
              f"stored 10 chains x 100 (every chain thinned evenly); max R-hat "
              f"{max(r['checks']['max_rhat'][0] for r in worst):.4f}, min bulk/tail ESS "
              f"{min(r['checks']['min_ess_bulk'][0] for r in worst):.0f}/"
              f"{min(r['checks']['min_ess_tail'][0] for r in worst):.0f} per run, "
              f"{sum(r['kernel']['divergences'] for r in worst)} divergent of "
              f"{len(worst) * args.chains * args.samples} kept transitions"
              + (f", runs agree (max |z| {report['agreement']['max_z']:.2f})"
                 if "agreement" in report and not failures else "")
              + (f"; FAILED CHECKS, written with --force: {'; '.join(failures)}"
                 if failures else "")
              + f"; generated {datetime.date.today().isoformat()}")
    report["reference_source"] = source
    if failures and not args.force:
        report["written"] = False
        return report
    if not args.dry_run:
        write_reference(pdb.posteriordb_dir(), name, arrays, source)
    report["written"] = not args.dry_run
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="posteriors (default: those without draws)")
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2], help="one independent run per seed (comma list)")
    parser.add_argument("--inflation", type=float, default=2.0)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-rhat", type=float, default=1.01)
    parser.add_argument("--min-ess", type=float, default=400.0)
    parser.add_argument("--max-z", type=float, default=4.5)
    parser.add_argument("--dry-run", action="store_true", help="check, write nothing")
    parser.add_argument("--force", action="store_true", help="write even if a check fails")
    parser.add_argument("--json", help="write the report here too")
    parser.add_argument("--progress", action="store_true", help="progress bar (stderr)")
    parser.add_argument("--save", help="directory for each run's full InferenceData (.nc)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = args.names or [n for n in pdb.posteriordb_names()
                           if not pdb.posteriordb_has_reference(n)]
    start, load = time.time(), os.getloadavg()
    reports = [reference_for(name, args) for name in names]
    out = {"script": "dev/reference_draws.py", "torch_threads": torch.get_num_threads(),
           "argv": sys.argv[1:] if argv is None else argv, "cpus": os.cpu_count(),
           "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                        "pyro": pyro.__version__, "numpy": np.__version__},
           "loadavg_start": load, "loadavg_end": os.getloadavg(),
           "wall_s": round(time.time() - start, 1), "reports": reports}
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if all(r["written"] or args.dry_run and not r["failures"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
