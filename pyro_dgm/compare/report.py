r"""Side-by-side comparison of posteriors from several inference methods.

For every method and every scalar element :math:`\theta` of the compared variables,
against the reference method's draws (usually NUTS):

- ``std_mean_error`` :math:`= (\bar\theta - \bar\theta_{\rm ref}) / \mathrm{sd}_{\rm ref}`;
- ``sd_ratio`` :math:`= \mathrm{sd} / \mathrm{sd}_{\rm ref}` (below 1: under-dispersed, the
  signature of mean-field VI on correlated parameters);
- ``w1_std``: the Wasserstein-1 distance between the two marginals, in units of
  :math:`\mathrm{sd}_{\rm ref}`;
- ``r_hat`` and ``ess_bulk`` (Vehtari et al. 2021) for MCMC methods, and ``nested_r_hat``
  (:func:`~pyro_dgm.compare.nested_rhat`) for MCMC posteriors of many chains (at least
  :data:`~pyro_dgm.defaults.NESTED_RHAT_MIN_CHAINS`), in superchains of consecutive chains:
  the posterior's ``num_superchains`` attribute, else
  :data:`~pyro_dgm.defaults.NESTED_RHAT_SUPERCHAINS` (8) where it divides the chains;
- ``svi_steps``: the optimizer steps of a VI method (its posterior's ``svi_steps``
  attribute; the comparison's VI methods stop by a convergence rule);
- ``khat`` and ``psis_ess`` for VI methods: the Pareto :math:`\hat k` of the importance
  ratios :math:`p(\theta, x)/q(\theta)` and the smoothed weights' effective sample size
  (:func:`~pyro_dgm.compare.psis_summary`; Yao et al. 2018), which judge the
  approximation without a reference.

Deterministic sites exported to the posterior are compared like any other variable;
quantities a posterior lacks can be derived from it (``derived={"theta": fn}``).

The reference is one of the compared methods, or draws from elsewhere (an
``InferenceData`` such as posteriordb's reference posterior, or exact draws of a conjugate
model): those get their own row, ``method`` :data:`REFERENCE_ROW` and ``kind``
``"reference"``, with R-hat and ESS where they have several chains.

Example::

    >>> table = compare_posteriors({"NUTS": idata_nuts, "ADVI": idata_advi}, reference="NUTS")
    >>> summarize(table)          # one row per method
    >>> compare_posteriors({"NUTS": idata_nuts}, reference=exact_draws)  # rows "reference", "NUTS"
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance

from pyro_dgm.compare._arviz import arviz
from pyro_dgm.compare.nested_rhat import nested_rhat_array
from pyro_dgm.compare.psis import psis_summary
from pyro_dgm.defaults import NESTED_RHAT_MIN_CHAINS, NESTED_RHAT_SUPERCHAINS

__all__ = ["REFERENCE_ROW", "compare_posteriors", "summarize"]

#: the ``method`` of the row of a reference given as draws rather than a method's name
REFERENCE_ROW = "reference"


def _flatten(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``name -> (chain, draw, *shape)`` to ``"name[i,j]" -> (chain, draw)`` per element."""
    out = {}
    for name, values in arrays.items():
        values = np.asarray(values, dtype=np.float64)
        shape = values.shape[2:]
        flat = values.reshape(values.shape[:2] + (-1,))
        for k, index in enumerate(np.ndindex(*shape)):
            label = f"{name}[{','.join(map(str, index))}]" if index else name
            out[label] = flat[:, :, k]
    return out


def _draws(post, var_names) -> dict[str, np.ndarray]:
    return _flatten({name: post[name].values for name in var_names})


def _diagnostics(post, var_names) -> tuple[dict, dict]:
    """Per-element split R-hat and bulk ESS (needs at least two chains)."""
    post = post[list(var_names)]
    if post.sizes["chain"] < 2 or post.sizes["draw"] < 4:
        return {}, {}
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # a stuck chain has zero within-chain variance: R-hat is inf/NaN, which is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat, ess = arviz.rhat(post), arviz.ess(post, method="bulk")
    as_arrays = [{n: np.asarray(ds[n].values)[None, None] for n in var_names}
                 for ds in (rhat, ess)]
    return _flatten(as_arrays[0]), _flatten(as_arrays[1])


def _superchains(post) -> int | None:
    """Superchains for nested R-hat of an MCMC posterior, or ``None`` (too few chains, or
    the default does not divide them)."""
    chains = post.sizes["chain"]
    k = post.attrs.get("num_superchains")
    if k is not None:
        return int(k)
    if chains < NESTED_RHAT_MIN_CHAINS or chains % NESTED_RHAT_SUPERCHAINS:
        return None
    return NESTED_RHAT_SUPERCHAINS


def _nested(post, var_names) -> dict:
    """Per-element nested R-hat, or ``{}`` where :func:`_superchains` says none."""
    k = _superchains(post)
    if k is None or post.sizes["draw"] < 2:
        return {}
    return {label: nested_rhat_array(values[..., None], k)[0]
            for label, values in _draws(post, var_names).items()}


def _kind(method: str, idata) -> str:
    """The posterior's ``inference_kind`` attribute (``"mcmc"`` or ``"vi"``), required: it
    decides whether R-hat and ESS are computed, and guessing it would hide a mistake."""
    kind = idata.posterior.attrs.get("inference_kind")
    if kind is None:
        raise ValueError(
            f"idatas[{method!r}]: the posterior has no 'inference_kind' attribute; set "
            f"idata.posterior.attrs['inference_kind'] to 'mcmc' or 'vi' (from_mcmc and "
            "from_guide set it)")
    return str(kind)


def _with_derived(method: str, post, derived: Mapping[str, Callable]):
    """``post`` with every quantity of ``derived`` that it lacks, computed from it."""
    for name, fn in derived.items():
        if name in post:
            continue
        value = fn(post)
        dims = getattr(value, "dims", None)
        value = np.asarray(getattr(value, "values", value), dtype=np.float64)
        lead = (post.sizes["chain"], post.sizes["draw"])
        if value.shape[:2] != lead:
            raise ValueError(f"derived[{name!r}]: for method {method!r} it returned shape "
                             f"{value.shape}, expected (chain, draw, ...) = {lead + ('...',)}")
        if not np.isfinite(value).all():
            raise ValueError(f"derived[{name!r}]: non-finite values for method {method!r}")
        if dims is None or len(dims) != value.ndim:
            dims = ("chain", "draw") + tuple(f"{name}_dim_{i}" for i in range(value.ndim - 2))
        post = post.assign({name: (tuple(dims), value)})
    return post


def _check_shapes(posts: Mapping[str, object], var_names: Sequence[str]) -> None:
    """Every compared variable must have one shape (past chain and draw) in every method:
    elements are matched by index, so a different shape has no meaningful match."""
    bad = []
    for name in var_names:
        shapes = {method: tuple(post[name].shape[2:]) for method, post in posts.items()}
        if len(set(shapes.values())) > 1:
            bad.append(f"{name!r} (" + ", ".join(f"{m!r}: {s}" for m, s in shapes.items()) + ")")
    if bad:
        raise ValueError("idatas: variables whose shape differs between methods cannot be "
                         "compared element by element: " + "; ".join(bad) + "; pass var_names "
                         "without them, or export the methods from the same model")


def _with_reference(idatas: Mapping[str, object], reference: str | arviz.InferenceData
                    ) -> tuple[dict, str, dict]:
    """``(idatas with the reference, its name, name -> kind given here)``."""
    if isinstance(reference, str):
        if reference not in idatas:
            raise ValueError(f"reference {reference!r} is not one of the methods {list(idatas)}")
        return dict(idatas), reference, {}
    if not hasattr(reference, "posterior"):
        raise ValueError("reference: must be a method name among idatas or an InferenceData "
                         f"with a posterior group, got {type(reference).__name__}")
    if REFERENCE_ROW in idatas:
        raise ValueError(f"idatas: a method is named {REFERENCE_ROW!r}, the row of the "
                         "reference draws; rename it")
    return {REFERENCE_ROW: reference, **idatas}, REFERENCE_ROW, {REFERENCE_ROW: "reference"}


def compare_posteriors(
    idatas: Mapping[str, object],
    reference: str | arviz.InferenceData,
    *,
    var_names: Sequence[str] | None = None,
    wall_times: Mapping[str, float] | None = None,
    derived: Mapping[str, Callable] | None = None,
    psis: Mapping[str, dict] | None = None,
) -> pd.DataFrame:
    """Compare the marginals of several posteriors with a reference posterior.

    :param idatas: method name -> ``InferenceData`` (from :func:`~pyro_dgm.compare.from_mcmc`
        or :func:`~pyro_dgm.compare.from_guide`). Each posterior must carry the attribute
        ``inference_kind`` (``"mcmc"``: R-hat and ESS are computed; ``"vi"``).
    :param reference: the key of the reference method, or reference draws (an
        ``InferenceData`` whose posterior has the variables with the same shapes, any
        numbers of chains and draws, no ``inference_kind`` needed). Either way the reference
        gets a row (errors 0, ratio 1); draws are the first row, named
        :data:`REFERENCE_ROW`, of kind ``"reference"``, with R-hat and bulk ESS when they
        have at least two chains (their wall time: a ``wall_time_s`` attribute, else NaN).
    :param var_names: variables to compare; default: those in every posterior, and the
        ``derived`` ones.
    :param wall_times: method -> seconds; default: each posterior's ``wall_time_s`` attr.
    :param derived: name -> function of a posterior ``xarray.Dataset`` returning a
        ``(chain, draw, ...)`` array (e.g. ``lambda p: p.mu + p.tau * p.eta``), computed for
        the posteriors that lack that variable (a reference exported without the model's
        ``pyro.deterministic`` sites, say); a posterior that has it keeps its own.
    :param psis: method -> :func:`~pyro_dgm.compare.psis_summary` already computed (the
        others are computed here).
    :raises ValueError: for an unknown reference or variable, posteriors that share no
        variable, a variable whose shape (past chain and draw) differs between methods
        (naming the variables and each method's shape), a posterior without
        ``inference_kind``, or a derived quantity of the wrong shape or not finite.
    :return: one row per method x parameter element with columns ``method``, ``kind``,
        ``parameter``, ``mean``, ``sd``, ``ref_mean``, ``ref_sd``, ``std_mean_error``,
        ``sd_ratio``, ``w1_std``, ``r_hat``, ``ess_bulk``, ``nested_r_hat``, ``khat``,
        ``psis_ess``, ``svi_steps``, ``wall_time_s``.
    """
    idatas, reference, given_kinds = _with_reference(idatas, reference)
    derived = dict(derived or {})
    for name, fn in derived.items():
        if not callable(fn):
            raise ValueError(f"derived[{name!r}]: must be a function of the posterior")
    kinds = {method: given_kinds.get(method) or _kind(method, idata)
             for method, idata in idatas.items()}
    posts = {method: _with_derived(method, idata.posterior, derived)
             for method, idata in idatas.items()}
    if var_names is None:
        common = [set(post.data_vars) for post in posts.values()]
        var_names = sorted(set.intersection(*common))
        if not var_names:
            raise ValueError("idatas: the posteriors share no variable, so there is nothing to "
                             "compare: " + "; ".join(f"{m!r} has {sorted(p.data_vars)}"
                                                      for m, p in posts.items()))
    var_names = list(var_names)
    if not var_names:
        raise ValueError("var_names: empty, so there is nothing to compare")
    for method, post in posts.items():
        missing = [v for v in var_names if v not in post]
        if missing:
            raise ValueError(f"var_names: {missing} not in the posterior of method {method!r}")
    _check_shapes(posts, var_names)
    ref = _draws(posts[reference], var_names)
    rows = []
    for method, idata in idatas.items():
        post, kind = posts[method], kinds[method]
        draws = _draws(post, var_names)
        chains = kind in ("mcmc", "reference")
        rhat, ess = _diagnostics(post, var_names) if chains else ({}, {})
        nested = _nested(post, var_names) if chains else {}
        steps = post.attrs.get("svi_steps", np.nan)
        wall = (wall_times or {}).get(method, idata.posterior.attrs.get("wall_time_s", np.nan))
        smoothed = (psis or {}).get(method) or (_NO_PSIS if kind == "reference"
                                                else psis_summary(idata))
        for label, values in draws.items():
            r = ref[label].ravel()
            v = values.ravel()
            ref_sd = r.std(ddof=1)
            rows.append({
                "method": method,
                "kind": kind,
                "parameter": label,
                "mean": v.mean(),
                "sd": v.std(ddof=1),
                "ref_mean": r.mean(),
                "ref_sd": ref_sd,
                "std_mean_error": (v.mean() - r.mean()) / ref_sd,
                "sd_ratio": v.std(ddof=1) / ref_sd,
                "w1_std": wasserstein_distance(v, r) / ref_sd,
                "r_hat": float(rhat[label].squeeze()) if label in rhat else np.nan,
                "ess_bulk": float(ess[label].squeeze()) if label in ess else np.nan,
                "nested_r_hat": float(nested[label]) if label in nested else np.nan,
                "khat": smoothed["khat"],
                "psis_ess": smoothed["psis_ess"],
                "svi_steps": float(steps),
                "wall_time_s": float(wall),
            })
    return pd.DataFrame(rows)


_NO_PSIS = {"khat": np.nan, "psis_ess": np.nan}


def _worst(group: pd.DataFrame) -> str:
    """The parameter with the largest |standardized mean error| ("" when none is finite or
    all are 0, as for the reference itself)."""
    errors = group["std_mean_error"].abs()
    if not errors.notna().any() or errors.max() == 0:
        return ""
    return str(group["parameter"].loc[errors.idxmax()])


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per method: typical and worst errors over all compared elements.

    ``max_abs_std_error`` is the largest |standardized mean error| and ``worst_parameter``
    the element it belongs to: the number that decides whether a method matches the
    reference (a mean over 50 elements hides one that is off by 3 sd). ``max_nested_r_hat``
    and ``steps`` (SVI steps) appear when the table has such values.
    """
    grouped = table.groupby("method", sort=False)
    summary = pd.DataFrame({
        "kind": grouped["kind"].first(),
        "mean_abs_std_error": grouped["std_mean_error"].apply(lambda s: s.abs().mean()),
        "max_abs_std_error": grouped["std_mean_error"].apply(lambda s: s.abs().max()),
        "worst_parameter": grouped[["parameter", "std_mean_error"]].apply(_worst),
        "median_sd_ratio": grouped["sd_ratio"].median(),
        "min_sd_ratio": grouped["sd_ratio"].min(),
        "max_sd_ratio": grouped["sd_ratio"].max(),
        "mean_w1_std": grouped["w1_std"].mean(),
        "max_r_hat": grouped["r_hat"].max(),
        "min_ess_bulk": grouped["ess_bulk"].min(),
        **({"max_nested_r_hat": grouped["nested_r_hat"].max()}
           if table.get("nested_r_hat", pd.Series(dtype=float)).notna().any() else {}),
        **{name: grouped[name].first() for name in ("khat", "psis_ess") if name in table},
        **({"steps": grouped["svi_steps"].first()}
           if table.get("svi_steps", pd.Series(dtype=float)).notna().any() else {}),
        "wall_time_s": grouped["wall_time_s"].first(),
    })
    return summary.reset_index()
