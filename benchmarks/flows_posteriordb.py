"""Flow guides against full-rank ADVI on the eight posteriordb posteriors (issue 19, item 4).

For every posterior ``posteriordb:<name>`` one ``pyro-dgm compare`` run with the methods
``fullrank``, ``flow-realnvp`` and ``flow-iaf`` (each flow fits its own full-rank Gaussian
first, then the flow on it; same step cap and convergence rule), scored against the bundle's
reference draws (posteriordb's; for ``mcycle_gp-accel_gp``, which posteriordb lacks, our own
from ``dev/reference_draws.py`` where the bundle holds them, else it is skipped). Per
posterior and method: the largest |standardized mean error|, the
smallest and largest marginal sd ratio, the mean W1 (in reference sds) and the SVI steps; and
issue 19's acceptance per flow: max |std error| <= fullrank's + 0.05, min sd ratio >=
fullrank's - 0.05, no sd ratio above 2 (``ratios`` holds flow / fullrank mean W1).

Usage::

    python -m benchmarks.flows_posteriordb --quick     # two posteriors, quick sizes
    python -m benchmarks.flows_posteriordb             # all eight, the comparison's budget
    python -m benchmarks.flows_posteriordb --names kidiq-kidscore_momiq,arma-arma11
"""

from __future__ import annotations

import sys
import time

import torch

from benchmarks._common import emit, parser
from pyro_dgm.compare import default_settings, run_comparison
from pyro_dgm.data.posteriordb import (
    load_posteriordb_data,
    posteriordb_has_reference,
    posteriordb_names,
)

METHODS = ["fullrank", "flow-realnvp", "flow-iaf"]
COLUMNS = {"max_abs_std_error": "max_abs_std_error", "min_sd_ratio": "min_sd_ratio",
           "max_sd_ratio": "max_sd_ratio", "mean_w1_std": "mean_w1_std", "steps": "steps"}
QUICK_NAMES = ["kidiq-kidscore_momiq", "earnings-logearn_interaction_z"]


def acceptance(rows: dict, flow: str) -> dict:
    """Issue 19's three checks of ``flow`` against ``fullrank`` on one posterior."""
    base, row = rows["fullrank"], rows[flow]
    return {"mean_error_ok": row["max_abs_std_error"] <= base["max_abs_std_error"] + 0.05,
            "min_sd_ok": row["min_sd_ratio"] >= base["min_sd_ratio"] - 0.05,
            "max_sd_ok": row["max_sd_ratio"] <= 2.0}


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--names", default=None, help="comma-separated posteriors (default all)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = (args.names.split(",") if args.names
             else QUICK_NAMES if args.quick else posteriordb_names())
    settings = default_settings(quick=args.quick, seed=args.seed, progress=False, threads=1)
    results, ratios = {}, {}
    run = {"methods": METHODS, "quick": args.quick, "num_steps": settings.num_steps,
           "seed": args.seed, "reference": "the bundle's reference draws (see reference_source)"}
    try:
        load_posteriordb_data(names[0])
    except FileNotFoundError as e:  # no bundle on this machine: say so in the record
        print(f"skipped: {e}", file=sys.stderr, flush=True)
        return emit("flows_posteriordb", {"skipped": str(e)}, {}, settings=run, out=args.out)
    for name in names:
        if not posteriordb_has_reference(name):
            results[name] = {"skipped": "the bundle holds no reference draws for it"}
            print(f"{name}: skipped (no reference draws)", file=sys.stderr, flush=True)
            continue
        start = time.perf_counter()
        result = run_comparison(f"posteriordb:{name}", METHODS, settings=settings, log=None)
        summary = result.summary.set_index("method")
        rows = {m: {k: float(summary.loc[m, c]) for k, c in COLUMNS.items()}
                for m in METHODS if m in summary.index}
        entry = {"methods": rows, "failures": dict(result.failures),
                 "reference_source": result.reference_source,
                 "wall_s": time.perf_counter() - start}
        for flow in METHODS[1:]:
            if flow in rows and "fullrank" in rows:
                entry[f"{flow}/acceptance"] = acceptance(rows, flow)
                ratios[f"{name}/{flow}/w1"] = rows[flow]["mean_w1_std"] / \
                    rows["fullrank"]["mean_w1_std"]
        results[name] = entry
        print(f"{name}: " + ", ".join(
            f"{m} err {r['max_abs_std_error']:.3f} sd [{r['min_sd_ratio']:.2f}, "
            f"{r['max_sd_ratio']:.2f}] W1 {r['mean_w1_std']:.3f}" for m, r in rows.items())
            + f" ({entry['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return emit("flows_posteriordb", results, ratios, settings=run, out=args.out)


if __name__ == "__main__":
    main()
