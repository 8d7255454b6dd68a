"""The main job: run several inference methods on one model and write a comparison report.

:func:`run_comparison` looks the model and methods up in :mod:`pyro_dgm.compare.registry`, runs each
method (timed), and, given an output directory, writes

- ``<method>.nc``: each posterior as ArviZ NetCDF (``arviz.from_netcdf`` reads it);
- ``comparison.csv`` / ``comparison.md``: the per-element table of
  :func:`~pyro_dgm.compare.compare_posteriors`; ``summary.csv`` / ``summary.md``: one row per
  method;
- ``forest.png``, ``sd_ratios.png``, ``marginals.png``: plots;
- ``index.md``: a page linking all of the above.

Example::

    >>> result = run_comparison("fa", ["nuts", "meanfield", "fullrank"], out="report",
    ...                         settings=default_settings(quick=True))
    >>> result.summary
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import pyro
import torch

from pyro_dgm.compare._arviz import arviz, set_attrs
from pyro_dgm.compare.plots import plot_posteriors, plot_sd_ratios
from pyro_dgm.compare.problems.user import model_entry
from pyro_dgm.compare.psis import psis_resample, psis_summary
from pyro_dgm.compare.registry import METHODS, MethodEntry, ModelEntry
from pyro_dgm.compare.report import REFERENCE_ROW, compare_posteriors, summarize
from pyro_dgm.compare.report_dir import ReportDir
from pyro_dgm.compare.settings import (
    Problem,
    Settings,
    default_settings,
    num_threads,
    num_warmup,
)
from pyro_dgm.defaults import COMPARE_METHODS, COMPARE_MODEL, COMPARE_REFERENCE

__all__ = [
    "DEFAULT_METHODS",
    "PSIS_SUFFIX",
    "ComparisonResult",
    "default_settings",
    "markdown_table",
    "run_comparison",
]

#: suffix of a method name asking for that VI method's PSIS-resampled draws
PSIS_SUFFIX = "+psis"
#: methods run when none are named (:data:`pyro_dgm.defaults.COMPARE_METHODS`)
DEFAULT_METHODS = list(COMPARE_METHODS)


@dataclass
class ComparisonResult:
    """Everything a comparison produced."""

    table: pd.DataFrame
    summary: pd.DataFrame
    idatas: dict
    out: Path | None = None
    files: list[Path] = field(default_factory=list)
    #: method -> one-line reason, for methods that failed numerically (the rest ran)
    failures: dict[str, str] = field(default_factory=dict)
    #: the reference's row in the tables: a method, or ``"reference"`` for draws from
    #: elsewhere (the problem's own, e.g. posteriordb's; also in ``idatas``)
    reference: str = COMPARE_REFERENCE
    #: where the reference came from, in words
    reference_source: str = ""


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """Render a DataFrame as a GitHub Markdown table."""

    def cell(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run_comparison(
    model: str | ModelEntry = COMPARE_MODEL,
    methods: list[str] | None = None,
    *,
    reference: str | arviz.InferenceData | None = None,
    out: str | os.PathLike | None = None,
    settings: Settings | None = None,
    overwrite: bool = False,
    log=print,
    on_commit: Callable[[], None] | None = None,
) -> ComparisonResult:
    """Run ``methods`` on ``model`` and compare them with ``reference``.

    Torch runs with ``settings.threads`` intra-op threads for the whole comparison (default
    :func:`~pyro_dgm.compare.settings.num_threads`: the cores divided by the MCMC chain
    processes, which inherit the setting) and with ``settings.dtype`` as its default dtype
    (so a model whose data are all integers, or whose priors are built from Python numbers,
    still runs in the dtype asked for), both restored afterwards.

    :param model: a name in :data:`pyro_dgm.compare.registry.MODELS`, ``"PATH.py:FUNCTION"``
        (a model function in a file, called without data), or a
        :class:`~pyro_dgm.compare.registry.ModelEntry`, e.g.
        :func:`~pyro_dgm.compare.problems.user.file_model` for a file model with data.
    :param methods: names in :data:`pyro_dgm.compare.registry.METHODS` (default
        :data:`DEFAULT_METHODS`). ``"<vi method>+psis"`` is that method's draws resampled
        with their Pareto-smoothed importance weights
        (:func:`~pyro_dgm.compare.psis_resample`), reusing the method's own draws when it is
        listed before.
    :param reference: what every method is measured against: the name of one of
        ``methods``; or an ``InferenceData`` of reference draws (its row in the tables is
        ``"reference"``); or ``None`` (default): the problem's own reference draws
        (:attr:`Problem.reference <pyro_dgm.compare.settings.Problem.reference>`, e.g.
        posteriordb's) where it has them, else
        :data:`pyro_dgm.defaults.COMPARE_REFERENCE` where it is among ``methods``, else
        the first MCMC method among them.
    :param out: directory for the report, written through a
        :class:`~pyro_dgm.compare.report_dir.ReportDir`: staged beside ``out`` (checked for
        writability before sampling) and moved into place only when complete.
    :param overwrite: replace ``out`` even if it is a non-empty directory that is not a
        previous report.
    :param log: where progress lines go (``None`` for silence).
    :param on_commit: called once the report is in place (see
        :class:`~pyro_dgm.compare.report_dir.ReportDir`).
    """
    methods = list(DEFAULT_METHODS if methods is None else methods)
    settings = settings or default_settings()
    entry = model_entry(model) if isinstance(model, str) else model
    entries = [_method_entry(m) for m in methods]
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods: duplicate names in {methods}")
    log = log or (lambda *a: None)
    previous_threads, previous_dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_default_dtype(settings.dtype)
    staging = None
    try:
        pyro.set_rng_seed(settings.seed)
        problem = entry.build(settings)
        ref_name, external, source = _reference(reference, problem, methods)
        staging = (ReportDir(out, overwrite=overwrite, on_commit=on_commit)
                   if out is not None else None)
        torch.set_num_threads(num_threads(settings))
        log(f"model {entry.name}: {problem.description}")
        log(f"reference: {ref_name} ({source})")
        result = _run(entry.name, problem, entries, (ref_name, external, source), settings,
                      staging, log)
    finally:
        torch.set_num_threads(previous_threads)
        torch.set_default_dtype(previous_dtype)
        if staging is not None:
            staging.discard()
    return result


def _default_reference(methods: list[str]) -> str:
    """:data:`~pyro_dgm.defaults.COMPARE_REFERENCE` where it runs, else the first MCMC
    method named (``--methods nuts,meanfield`` is measured against ``nuts``)."""
    if COMPARE_REFERENCE in methods:
        return COMPARE_REFERENCE
    mcmc = [m for m in methods if m in METHODS and METHODS.get(m).kind == "mcmc"]
    return mcmc[0] if mcmc else COMPARE_REFERENCE


def _reference(reference: str | arviz.InferenceData | None, problem: Problem,
               methods: list[str]) -> tuple[str, arviz.InferenceData | None, str]:
    """``(row name, external draws or None, source in words)`` of the comparison's
    reference (see :func:`run_comparison`)."""
    if reference is None:
        reference = problem.reference if problem.reference is not None else \
            _default_reference(methods)
    if isinstance(reference, str):
        if reference not in methods:
            raise ValueError(f"reference {reference!r} must be one of the methods {methods}"
                             + ("" if problem.reference is not None else
                                f" (model {problem.name!r} has no reference draws of its own)"))
        return reference, None, f"method {reference} of this run"
    if not hasattr(reference, "posterior"):
        raise ValueError(f"reference: a method name or an InferenceData with a posterior "
                         f"group, got {type(reference).__name__}")
    if REFERENCE_ROW in methods:
        raise ValueError(f"methods: {REFERENCE_ROW!r} names the reference draws' row; "
                         "rename the method")
    if reference is problem.reference:
        source = problem.reference_source or f"reference draws of model {problem.name!r}"
    else:
        source = reference.posterior.attrs.get("reference_source",
                                               "draws given to run_comparison")
    return REFERENCE_ROW, copy.deepcopy(reference), str(source)


def _method_entry(name: str) -> MethodEntry:
    """The registry's entry, or a ``<vi method>+psis`` entry built from it."""
    if not name.endswith(PSIS_SUFFIX):
        return METHODS.get(name)
    base = METHODS.get(name[: -len(PSIS_SUFFIX)])
    if base.kind != "vi":
        raise ValueError(f"methods: {name!r}: PSIS correction needs a VI method (a guide's "
                         f"draws with log_q); {base.name!r} is {base.kind}")
    return MethodEntry(name, base.run, kind="vi",
                       description=f"{base.description}; draws PSIS-resampled")


def _run_entry(entry: MethodEntry, problem, settings: Settings, idatas: dict):
    if not entry.name.endswith(PSIS_SUFFIX):
        return entry.run(problem, settings)
    base = idatas.get(entry.name[: -len(PSIS_SUFFIX)])
    if base is None:
        base = entry.run(problem, settings)
    return psis_resample(base, seed=settings.seed)


def _run(model: str, problem: Problem, entries, reference: tuple, settings: Settings,
         staging, log) -> ComparisonResult:
    ref_name, external, source = reference
    path = staging.path if staging is not None else None
    run_id = staging.run_id if staging is not None else None
    about = {"model": model, "reference": ref_name, "reference_source": source,
             **({"run_id": run_id} if run_id else {})}
    idatas, files, failures = {}, [], {}
    if external is not None:
        set_attrs(external, {**about, "method": REFERENCE_ROW, "inference_kind": "reference"})
        idatas[REFERENCE_ROW] = external
        if path is not None:
            files.append(path / f"{REFERENCE_ROW}.nc")
            external.to_netcdf(str(files[-1]))
    for i, entry in enumerate(entries):
        pyro.clear_param_store()
        pyro.set_rng_seed(settings.seed + 1000 * i)
        log(f"running {entry.name} ({entry.description})")
        start = time.perf_counter()
        try:
            idata = _run_entry(entry, problem, replace(settings, seed=settings.seed + 1000 * i),
                               idatas)
        except (RuntimeError, ArithmeticError, torch.linalg.LinAlgError) as e:
            # a numerical failure of one method (e.g. a Hessian that is not positive
            # definite) must not lose the others: report it and go on
            if entry.name == ref_name:
                raise ValueError(f"reference method {ref_name!r} failed: {e}") from e
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            failures[entry.name] = message
            log(f"  {entry.name} FAILED: {message}")
            continue
        wall = time.perf_counter() - start
        set_attrs(idata, {"wall_time_s": wall, "method": entry.name, "inference_kind": entry.kind,
                          **about})
        idatas[entry.name] = idata
        log(f"  {entry.name}: {wall:.1f} s")
        if path is not None:
            files.append(path / f"{entry.name}.nc")
            idata.to_netcdf(str(files[-1]))
    methods = {name: idata for name, idata in idatas.items()
               if external is None or name != REFERENCE_ROW}
    psis = {name: psis_summary(idata) for name, idata in methods.items()}  # smoothed once
    table = compare_posteriors(methods, external if external is not None else ref_name,
                               var_names=problem.var_names, psis=psis)
    summary = summarize(table)
    result = ComparisonResult(table, summary, idatas, path, files, failures, ref_name, source)
    if staging is not None:
        _write_report(result, problem, settings, run_id, psis)
        staging.commit({"model": model, "methods": [e.name for e in entries],
                        "reference": ref_name, "reference_source": source,
                        "seed": settings.seed})
        result.files = [staging.final(f) for f in result.files]
        result.out = staging.out
    return result


def _write_report(result: ComparisonResult, problem, settings, run_id: str,
                  psis: dict) -> None:
    path, reference = result.out, result.reference
    table, summary = result.table, result.summary
    for name, frame in [("comparison", table), ("summary", summary)]:
        frame.to_csv(path / f"{name}.csv", index=False)
        (path / f"{name}.md").write_text(markdown_table(frame))
        result.files += [path / f"{name}.csv", path / f"{name}.md"]
    var_names = problem.var_names or None
    _save_figure(plot_posteriors(result.idatas, var_names=var_names), path / "forest.png")
    _save_figure(plot_sd_ratios(table, reference=reference), path / "sd_ratios.png")
    first = (var_names or sorted(result.idatas[reference].posterior.data_vars))[:2]
    _save_figure(plot_posteriors(result.idatas, var_names=first, kind="density"),
                 path / "marginals.png")
    result.files += [path / n for n in ("forest.png", "sd_ratios.png", "marginals.png")]
    links = "\n".join(f"- [{f.name}]({f.name})" for f in result.files)
    failed = "".join(f"**{name} failed**: {why}\n\n" for name, why in result.failures.items())
    verdicts = "".join(
        f"- **{name}**: k̂ = {p['khat']:.2f} from {p['num_draws']} draws — {p['verdict']}"
        + (f" (these draws are PSIS-resampled, weights' ESS {p['psis_ess']:.0f})"
           if name.endswith(PSIS_SUFFIX) else "") + "\n"
        for name, p in psis.items() if p["verdict"])
    if verdicts:
        verdicts = ("## Can the VI be trusted without a reference? (PSIS k̂)\n\n"
                    "k̂ < 0.5: good; below the sample-size threshold (at most 0.7): usable "
                    "after PSIS correction (`<method>+psis`); above: not reliable "
                    "(Yao et al. 2018; Vehtari et al. 2024).\n\n" + verdicts + "\n")
    index = (
        f"# Posterior comparison: {problem.name}\n\n{problem.description}\n\n"
        f"{_reference_line(result, reference)}\n\nSettings: {settings.num_chains} chain(s) x "
        f"{settings.num_samples} draws after {num_warmup(settings)} warm-up (`hmc`: its own "
        "sizes, `pyro_dgm.defaults.COMPARE_HMC_RUN`); "
        f"at most {settings.num_steps} SVI steps (stopped by the convergence rule: the "
        f"summary's `steps`); seed {settings.seed}; device {settings.device}; "
        f"{num_threads(settings)} torch thread(s). Run id `{run_id}`.\n\n"
        "`sd_ratio` is each marginal's sd over the reference's (below 1: under-dispersed); "
        "`std_mean_error` and `w1_std` are in units of the reference sd.\n\n"
        f"## Summary\n\n{markdown_table(summary)}\n{failed}{verdicts}"
        "## Plots\n\n![forest](forest.png)\n\n![sd ratios](sd_ratios.png)\n\n"
        f"![marginals](marginals.png)\n\n## Files\n\n{links}\n"
    )
    (path / "index.md").write_text(index)
    result.files.append(path / "index.md")


def _reference_line(result: ComparisonResult, reference: str) -> str:
    """Where the reference came from, for the report's index page."""
    if reference != REFERENCE_ROW or reference not in result.idatas:
        return f"Reference: method **{reference}** of this run."
    post = result.idatas[reference].posterior
    return (f"Reference: the draws **{reference}** ({post.sizes['chain']} chain(s) x "
            f"{post.sizes['draw']} draws), not run here: {result.reference_source}.")
