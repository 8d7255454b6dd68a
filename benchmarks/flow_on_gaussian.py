"""Paired check of issue 19: a flow started on full-rank ADVI against that same Gaussian.

For each seed: fit full-rank ADVI exactly as ``pyro-dgm compare``'s ``fullrank`` method does
(:func:`~pyro_dgm.compare.methods.pyro.fit_fullrank`), export its draws, then fit the
``flow-*`` method's flow on it (:func:`~pyro_dgm.compare.methods.flows.fit_flow_stage`) and
export again; both are scored against one reference (a posterior file such as the
``hmc.nc`` of a ``pyro-dgm compare`` run, or a comparison method run here, default ``hmc``)
by the comparison's summary (mean W1, |standardized mean error|, sd ratios). Unlike two
methods of one comparison run, which get different seeds, each pair shares its Gaussian, so
the table shows what the flow adds to it.

Usage::

    python -m benchmarks.flow_on_gaussian --quick          # one seed, hmc reference run here
    python -m benchmarks.flow_on_gaussian --reference /tmp/report/hmc.nc --seeds 1000,2001
"""

from __future__ import annotations

import sys
import time

import arviz as az
import pyro
import torch

from benchmarks._common import emit, parser
from pyro_dgm.compare import compare_posteriors, default_settings, summarize
from pyro_dgm.compare.methods.fitting import export_guide
from pyro_dgm.compare.methods.flows import FLOW_METHODS, fit_flow_stage
from pyro_dgm.compare.methods.pyro import fit_fullrank
from pyro_dgm.compare.registry import METHODS, MODELS

COLUMNS = ["mean_w1_std", "mean_abs_std_error", "max_abs_std_error", "min_sd_ratio",
           "max_sd_ratio"]


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--reference", default="hmc",
                   help="a reference posterior (.nc file) or a comparison method to run")
    p.add_argument("--model", default="fa")
    p.add_argument("--method", default="flow-realnvp", choices=list(FLOW_METHODS))
    p.add_argument("--seeds", default="1000,2000")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = default_settings(quick=args.quick, progress=False, threads=1)
    pyro.set_rng_seed(settings.seed)
    problem = MODELS.get(args.model).build(settings)
    if args.reference.endswith(".nc"):
        reference = az.from_netcdf(args.reference)
    else:
        reference = METHODS.get(args.reference).run(problem, settings)
    results = {}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds[:1] if args.quick else seeds:
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        start = time.perf_counter()
        gaussian, affine_steps = fit_fullrank(problem, settings)
        fullrank = export_guide(problem, gaussian, settings)
        guide, losses = fit_flow_stage(problem, settings, args.method, gaussian)
        flow = export_guide(problem, guide, settings)
        table = summarize(compare_posteriors(
            {"reference": reference, "fullrank": fullrank, args.method: flow},
            reference="reference", var_names=problem.var_names)).set_index("method")
        row = {f"{m}/{c}": float(table.loc[m, c]) for m in ("fullrank", args.method)
               for c in COLUMNS}
        row.update(affine_steps=affine_steps, flow_steps=len(losses),
                   rejected_steps=losses.rejected, wall_s=time.perf_counter() - start)
        results[f"seed={seed}"] = row
        print(f"seed {seed}: mean W1 fullrank {row['fullrank/mean_w1_std']:.3f}, "
              f"{args.method} {row[f'{args.method}/mean_w1_std']:.3f}", file=sys.stderr,
              flush=True)
    ratios = {k: v[f"{args.method}/mean_w1_std"] / v["fullrank/mean_w1_std"]
              for k, v in results.items()}
    run = {"model": args.model, "method": args.method, "reference": args.reference,
           "quick": args.quick, "num_steps": settings.num_steps}
    return emit("flow_on_gaussian", results, ratios, settings=run, out=args.out)


if __name__ == "__main__":
    main()
