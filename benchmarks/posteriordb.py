"""Benchmark: every comparison method on the eight posteriordb posteriors, scored against
posteriordb's reference draws.

For each posterior (``posteriordb:<name>`` in :data:`pyro_dgm.compare.registry.MODELS`) one
call of :func:`pyro_dgm.compare.run_comparison` runs all methods with the comparison's own
code and sizes, and every method is scored against the posterior's reference draws
(posteriordb's, 10 chains x 100). posteriordb has none for ``mcycle_gp-accel_gp``; a bundle
filled by ``dev/reference_draws.py`` holds our own there (ChEES-HMC, labelled in the
manifest and in the record). Without them the reference is this run's ``nuts`` (4 chains x
1,000 after 1,000 warm-up), which is then scored against nothing (its row says so).

Per posterior x method (``results["posteriors"][name]["methods"][method]``):

- ``max_abs_std_error``: the largest |mean - ref mean| / ref sd over all parameter elements,
  and ``worst_parameter``; ``min_sd_ratio``, ``median_sd_ratio``, ``max_sd_ratio`` (sd over
  ref sd); ``mean_w1_std`` (Wasserstein-1 of the marginals in ref sds, averaged);
- ``stan_rule``: whether every element has |std error| < 0.25 and sd ratio in [0.8, 1.25]
  (the acceptance rule of issue 15, Stan's rule for posteriordb);
- ``wall_time_s``; ``grad_evals`` where known: Pathfinder's ``num_grad_evals``; SVI steps x
  particles for the SVI methods (one particle = one gradient of the log joint; Laplace's MAP
  fit uses 1, the Gaussian and flow guides 4, IWAE 8, the perturbative bound 16);
  ChEES-HMC's leapfrog steps of the kept draws, all chains (warm-up is not exported); ``mh``
  uses no gradients (0); Pyro's NUTS does not export its tree sizes (``None``);
- ``max_r_hat``, ``min_ess_bulk`` (MCMC), ``khat`` (VI: PSIS k-hat of the guide's draws);
- a method that failed has ``failed``: its one-line reason, and no scores.

Per posterior also ``nuts_agreement``: NUTS (4 x 1,000 after 1,000) against the reference by
the rule above, with its worst elements. ``ratios``: per method the share of scored
posteriors passing the rule, and the median over posteriors of its wall time over NUTS's.

``gibbs`` is not run: its exact conditionals are for discrete sites, and none of the eight
posteriors has any (it would be Metropolis-within-Gibbs on continuous sites, which ``mh``
already covers).

Run: ``PYRO_DGM_POSTERIORDB=BUNDLE python -m benchmarks.posteriordb [--posteriors a,b]
[--methods nuts,meanfield] [--quick] [--out FILE.json] [--table FILE.md]``; the JSON (and
the table) are rewritten after each posterior, so a run that is cut off keeps what it did.
``--quick``: 2 chains x (100 + 100), at most 200 SVI steps, on ``gp_pois_regr-gp_regr``
unless ``--posteriors`` says otherwise — a smoke test, not a score. Without a bundle it
exits with status 2, saying so.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import emit, machine_info, parser

__all__ = ["DEFAULT_METHODS", "POSTERIORS", "main", "stan_rule"]

#: the eight posteriors, roughly from the quickest NUTS run to the slowest
POSTERIORS = [
    "gp_pois_regr-gp_regr",
    "earnings-logearn_interaction_z",
    "mesquite-logmesquite_logvas",
    "arma-arma11",
    "kidiq-kidscore_momiq",
    "nes2000-nes",
    "bball_drive_event_0-hmm_drive_0",
    "mcycle_gp-accel_gp",
]
#: every registered method but ``gibbs`` (no discrete sites) and the planar/radial flows
#: (optional: ``--methods``), plus the PSIS-corrected Gaussians (they reuse the draws)
DEFAULT_METHODS = [
    "nuts", "hmc", "mh", "meanfield", "meanfield+psis", "fullrank", "fullrank+psis",
    "laplace", "pathfinder", "flow-realnvp", "flow-iaf", "iwae", "iwae-sir", "perturbative",
]
#: Stan's rule (issue 15): |std mean error| below this ...
MEAN_TOL = 0.25
#: ... and the sd ratio within these bounds
SD_RATIO_BOUNDS = (0.8, 1.25)
#: the posterior of ``--quick`` when none is named
QUICK_POSTERIOR = "gp_pois_regr-gp_regr"
#: quick sizes: a smoke test of the whole pipeline
QUICK = {"num_samples": 100, "num_warmup": 100, "num_chains": 2, "num_steps": 200}


def _particles() -> dict[str, int]:
    """Gradient evaluations per SVI step of each SVI method (see the module docstring)."""
    from pyro_dgm.compare.methods.objectives import IWAE_PARTICLES, PERTURBATIVE_PARTICLES

    per = {"meanfield": 4, "fullrank": 4, "laplace": 1, "iwae": IWAE_PARTICLES,
           "iwae-sir": IWAE_PARTICLES, "perturbative": PERTURBATIVE_PARTICLES}
    per.update({m: 4 for m in ("flow-realnvp", "flow-iaf", "flow-planar", "flow-radial")})
    return per


def stan_rule(rows) -> tuple[bool, list[str]]:
    """Whether every element of one method's comparison rows passes Stan's rule, and the
    elements that do not (``name: std error e, sd ratio r``)."""
    lo, hi = SD_RATIO_BOUNDS
    bad = [f"{r.parameter}: std error {r.std_mean_error:+.3f}, sd ratio {r.sd_ratio:.3f}"
           for r in rows.itertuples()
           if not (abs(r.std_mean_error) < MEAN_TOL and lo <= r.sd_ratio <= hi)]
    return not bad, bad


def _num(value):
    """A JSON-friendly float (``None`` for missing/NaN)."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _grad_evals(method: str, idata) -> float | None:
    post = idata.posterior.attrs
    base = method.removesuffix("+psis")
    if base == "pathfinder":
        return _num(post.get("num_grad_evals"))
    if base == "mh":
        return 0.0
    if base == "hmc" and hasattr(idata, "sample_stats") and "num_steps" in idata.sample_stats:
        return float(idata.sample_stats["num_steps"].sum())
    particles = _particles().get(base)
    steps = post.get("svi_steps")
    return float(steps) * particles if particles and steps is not None else None


def _score(result, name: str, reference: str) -> dict:
    """Per method scores of one comparison (see the module docstring)."""
    table, summary = result.table, result.summary
    scores = {}
    for row in summary.itertuples():
        method = row.method
        if method == "reference":  # posteriordb's draws: no method of this run
            continue
        if method == reference:
            scores[method] = {"reference": True, "wall_time_s": _num(row.wall_time_s),
                              "note": "the reference of this posterior (no posteriordb "
                                      "draws): not scored"}
            continue
        passed, bad = stan_rule(table[table.method == method])
        idata = result.idatas[method]
        scores[method] = {
            "max_abs_std_error": _num(row.max_abs_std_error),
            "worst_parameter": str(row.worst_parameter),
            "min_sd_ratio": _num(row.min_sd_ratio),
            "median_sd_ratio": _num(row.median_sd_ratio),
            "max_sd_ratio": _num(row.max_sd_ratio),
            "mean_w1_std": _num(row.mean_w1_std),
            "stan_rule": passed,
            "stan_rule_failures": len(bad),
            "wall_time_s": _num(row.wall_time_s),
            "grad_evals": _grad_evals(method, idata),
            "svi_steps": _num(getattr(row, "steps", None)),
            "max_r_hat": _num(row.max_r_hat),
            "min_ess_bulk": _num(row.min_ess_bulk),
            "khat": _num(getattr(row, "khat", None)),
        }
        if method == "nuts":
            scores[method]["stan_rule_violations"] = bad[:10]
    for method, why in result.failures.items():
        scores[method] = {"failed": why}
    return scores


def run_posterior(name: str, methods: list[str], settings, log) -> dict:
    """One comparison of ``methods`` on ``name``; a method that raises (beyond the numerical
    failures :func:`run_comparison` records itself) is dropped and recorded, and the
    comparison rerun without it."""
    from pyro_dgm.compare import run_comparison
    from pyro_dgm.compare.problems.posteriordb import reference_idata

    has_ref = reference_idata(name) is not None
    reference = None if has_ref else "nuts"
    raised: dict[str, str] = {}
    methods = list(methods)
    current: dict = {}
    while True:
        current["method"] = None

        def tracking_log(*args):
            text = " ".join(map(str, args))
            if text.startswith("running "):
                current["method"] = text.split()[1]
            log(text)

        start = time.perf_counter()
        try:
            result = run_comparison(f"posteriordb:{name}", methods, reference=reference,
                                    settings=settings, log=tracking_log)
            break
        except Exception as e:  # noqa: BLE001 - a method's crash must not lose the others
            failed = current["method"]
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if failed is None or failed not in methods or failed == reference:
                raise
            log(f"  {failed} RAISED {why}; rerunning without it")
            raised[failed] = why
            methods.remove(failed)
    ref_name = result.reference
    scores = _score(result, name, ref_name)
    scores.update({m: {"failed": why} for m, why in raised.items()})
    if has_ref and "nuts" in scores and "failed" not in scores["nuts"]:
        nuts = scores["nuts"]
        agreement = {"passes": nuts["stan_rule"], "max_abs_std_error": nuts["max_abs_std_error"],
                     "min_sd_ratio": nuts["min_sd_ratio"], "max_sd_ratio": nuts["max_sd_ratio"],
                     "min_ess_bulk": nuts["min_ess_bulk"], "max_r_hat": nuts["max_r_hat"],
                     "violations": nuts.pop("stan_rule_violations")}
    elif "nuts" in scores and "failed" not in scores["nuts"]:
        agreement = {"passes": None, "note": "no posteriordb reference draws: NUTS is the "
                     "reference here, not checked"}
    else:
        agreement = {"passes": None, "note": "nuts not run or failed"}
    return {"reference": ref_name, "reference_source": result.reference_source,
            "wall_time_s": time.perf_counter() - start, "methods": scores,
            "nuts_agreement": agreement}


def _ratios(posteriors: dict, methods: list[str]) -> dict:
    ratios = {}
    for method in methods:
        scored = [p["methods"][method] for p in posteriors.values()
                  if method in p["methods"] and "stan_rule" in p["methods"][method]]
        failed = sum("failed" in p["methods"].get(method, {}) for p in posteriors.values())
        if scored or failed:
            ratios[f"{method}_stan_rule_share"] = (sum(s["stan_rule"] for s in scored)
                                                  / (len(scored) + failed))
        times = [p["methods"][method]["wall_time_s"] / p["methods"]["nuts"]["wall_time_s"]
                 for p in posteriors.values()
                 if p["methods"].get(method, {}).get("wall_time_s")
                 and p["methods"].get("nuts", {}).get("wall_time_s")]
        if times and method != "nuts":
            ratios[f"{method}_time_vs_nuts_median"] = float(np.median(times))
    return ratios


def _fmt(value, spec=".3g") -> str:
    return "" if value is None else format(value, spec)


def markdown(posteriors: dict) -> str:
    """The table: one row per posterior x method."""
    head = ("| posterior | method | max \\|std err\\| (worst) | min sd ratio | median sd ratio "
            "| mean W1 | Stan's rule | time s | grad evals |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, p in posteriors.items():
        for method, s in p["methods"].items():
            if "failed" in s:
                why = s["failed"][:120].replace("|", "/")
                rows.append(f"| {name} | {method} | failed: {why} | | | | | | |")
            elif s.get("reference"):
                rows.append(f"| {name} | {method} | reference: this run's NUTS (no posteriordb "
                            f"draws), not scored | | | | | {_fmt(s['wall_time_s'], '.0f')} | |")
            else:
                rows.append(
                    f"| {name} | {method} | {_fmt(s['max_abs_std_error'])} "
                    f"({s['worst_parameter']}) | {_fmt(s['min_sd_ratio'])} "
                    f"| {_fmt(s['median_sd_ratio'])} | {_fmt(s['mean_w1_std'])} "
                    f"| {'pass' if s['stan_rule'] else 'fail'} "
                    f"| {_fmt(s['wall_time_s'], '.1f')} | {_fmt(s['grad_evals'], '.3g')} |")
    return head + "\n".join(rows) + "\n"


def summary_markdown(record: dict) -> str:
    """Two tables from a record: NUTS against the reference per posterior, and per method
    the posteriors that pass Stan's rule."""
    posteriors = record["results"]["posteriors"]
    lines = ["| posterior | NUTS passes | max \\|std err\\| | sd ratios | min ESS | max R-hat "
             "| violations |", "|---|---|---|---|---|---|---|"]
    for name, p in posteriors.items():
        a = p.get("nuts_agreement", {})
        if a.get("passes") is None:
            lines.append(f"| {name} | n/a | {a.get('note', p.get('failed', ''))} | | | | |")
            continue
        lines.append(f"| {name} | {'yes' if a['passes'] else 'no'} "
                     f"| {_fmt(a['max_abs_std_error'])} | {_fmt(a['min_sd_ratio'])}-"
                     f"{_fmt(a['max_sd_ratio'])} | {_fmt(a['min_ess_bulk'], '.0f')} "
                     f"| {_fmt(a['max_r_hat'], '.3f')} | {'; '.join(a['violations'][:3])} |")
    methods = record["settings"]["methods"]
    lines += ["", "| method | passes Stan's rule | failed to run |", "|---|---|---|"]
    for m in methods:
        ok = [n for n, p in posteriors.items() if p["methods"].get(m, {}).get("stan_rule")]
        scored = [n for n, p in posteriors.items() if "stan_rule" in p["methods"].get(m, {})]
        failed = [n for n, p in posteriors.items() if "failed" in p["methods"].get(m, {})]
        lines.append(f"| {m} | {len(ok)} of {len(scored) + len(failed)}"
                     f"{' (' + ', '.join(n.split('-')[0] for n in ok) + ')' if ok else ''} "
                     f"| {', '.join(n.split('-')[0] for n in failed)} |")
    return "\n".join(lines) + "\n"


def _write(path: str | None, record: dict) -> None:
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float) + "\n")
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> dict:
    p = parser("every comparison method on eight posteriordb posteriors")
    p.add_argument("--posteriors", default=None,
                   help=f"comma-separated (default: all eight; with --quick: {QUICK_POSTERIOR})")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--table", default=None, help="also write the Markdown table here")
    p.add_argument("--render", default=None, metavar="FILE.json",
                   help="print the tables of a record written before, run nothing")
    args = p.parse_args(argv)
    if args.render:
        record = json.loads(Path(args.render).read_text())
        print(markdown(record["results"]["posteriors"]) + "\n" + summary_markdown(record))
        return record
    torch.set_num_threads(1)
    from pyro_dgm.compare import default_settings
    from pyro_dgm.compare.registry import METHODS
    from pyro_dgm.data.posteriordb import posteriordb_available

    if not posteriordb_available():
        p.error("no posteriordb bundle found: set PYRO_DGM_POSTERIORDB to the bundle's "
                "directory (see docs/posteriordb.md)")
    chosen = args.posteriors or (QUICK_POSTERIOR if args.quick else ",".join(POSTERIORS))
    names = [n for n in chosen.split(",") if n]
    methods = [m for m in args.methods.split(",") if m]
    for n in names:
        if n not in POSTERIORS:
            p.error(f"--posteriors: unknown posterior {n!r}; choose from {POSTERIORS}")
    for m in methods:
        if m.removesuffix("+psis") not in METHODS:
            p.error(f"--methods: unknown method {m!r}")
    sizes = QUICK if args.quick else {}
    settings = default_settings(quick=args.quick, seed=args.seed, device=args.device,
                                progress=False, threads=1, **sizes)
    config = {"posteriors": names, "methods": methods, "quick": args.quick,
              "num_chains": settings.num_chains, "num_warmup": settings.num_warmup,
              "num_samples": settings.num_samples, "max_svi_steps": settings.num_steps,
              "seed": settings.seed, "dtype": str(settings.dtype),
              "rule": f"|std error| < {MEAN_TOL}, sd ratio in {list(SD_RATIO_BOUNDS)}",
              "skipped": {"gibbs": "no discrete sites in any of the eight posteriors"},
              "bundle": os.environ.get("PYRO_DGM_POSTERIORDB", "")}

    def log(*a):
        print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)

    posteriors: dict = {}
    for name in names:
        log(f"=== {name} (load average {os.getloadavg()[0]:.1f})")
        try:
            posteriors[name] = run_posterior(name, methods, settings, log)
        except Exception as e:  # noqa: BLE001 - keep the other posteriors
            posteriors[name] = {"failed": f"{type(e).__name__}: {str(e).splitlines()[0]}",
                                "methods": {}}
        posteriors[name]["load_average_after"] = os.getloadavg()[0]
        results = {"posteriors": posteriors}
        _write(args.out, {"benchmark": "posteriordb", "machine": machine_info(args.device),
                          "settings": config, "results": results,
                          "ratios": _ratios(posteriors, methods), "partial": True})
        if args.table:
            Path(args.table).write_text(markdown(posteriors))
    table = markdown(posteriors)
    print(table, file=sys.stderr)
    if args.table:
        Path(args.table).write_text(table)
    return emit("posteriordb", {"posteriors": posteriors}, _ratios(posteriors, methods),
                settings=config, device=args.device, out=args.out)


if __name__ == "__main__":
    main()
