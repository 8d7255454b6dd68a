r"""Can this VI be trusted without MCMC? The PSIS diagnostic and PSIS-corrected draws.

For :math:`S` draws :math:`\theta_s \sim q` of a variational approximation, the importance
ratios

.. math::

    \log r_s = \log p(\theta_s, x) - \log q(\theta_s)

(``sample_stats["lp"] - sample_stats["log_q"]`` of a :func:`~pyro_dgm.compare.from_guide`
export, both in the constrained space with the guide's own Jacobian terms) are Pareto
smoothed (:func:`pyro_dgm.inference.psis_smooth`, which matches ``arviz.psislw``). The shape
:math:`\hat k` of the generalized Pareto distribution fitted to their upper tail says how
far :math:`q` can be trusted (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?:
Evaluating variational inference", ICML; Vehtari, Simpson, Gelman, Yao & Gabry 2024,
"Pareto smoothed importance sampling", JMLR 25(72)):

- :math:`\hat k < 0.5`: **good**, the draws of :math:`q` can be used as they are;
- :math:`0.5 \le \hat k < \kappa(S) = \min(1 - 1/\log_{10} S,\ 0.7)`: **usable after PSIS
  correction**, reweight or resample the draws with the smoothed weights
  (:func:`psis_resample`);
- :math:`\hat k \ge \kappa(S)`: **not reliable**; the importance weights have (nearly)
  infinite variance, or there are too few draws for their tail. Below :math:`S = 100` the
  sample-size threshold :math:`\kappa(S)` falls under 0.5 and then also caps "good".

All chains are pooled: with several guides stacked as chains each draw's ratio uses its
own guide's :math:`\log q`. When the guide *is* the posterior the ratios are the constant
:math:`\log p(x)`, up to rounding: a tail fitted to rounding noise (a handful of distinct
values) gives any :math:`\hat k` at all (ArviZ: about 200 on a conjugate Normal model, or
``inf``). Ratios whose spread is within 1024 ulps of :math:`|\log p| + |\log q|`, or whose
largest values are all equal, have no tail: :math:`\hat k = -\infty` and uniform weights.
With fewer draws than the fit needs (about 25) :math:`\hat k` is ``inf``.

Example::

    >>> idata = from_guide(model, guide, x, num_samples=4000)  # lp and log_q per draw
    >>> khat = psis_diagnostic(idata)
    >>> psis_verdict(khat, 4000)
    'usable after PSIS correction'
    >>> corrected = psis_resample(idata, seed=0)  # 4000 draws with replacement
    >>> corrected.sample_stats.attrs["psis_ess"]
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pyro_dgm._validation import check_int
from pyro_dgm.compare._arviz import arviz, group_names, is_arviz_1, set_attrs
from pyro_dgm.inference.psis import psis_smooth

__all__ = ["VERDICTS", "khat_threshold", "psis_diagnostic", "psis_resample", "psis_summary",
           "psis_verdict"]

#: the verdicts of :func:`psis_verdict`, best first
VERDICTS = ("good", "usable after PSIS correction", "not reliable")

_RESAMPLED = ("posterior", "sample_stats", "log_likelihood")  # groups with chain, draw
_KEPT = ("observed_data", "constant_data")  # groups copied as they are


def khat_threshold(num_draws: int) -> float:
    r"""Sample-size threshold :math:`\kappa(S) = \min(1 - 1/\log_{10} S,\ 0.7)` of
    Vehtari et al. (2024): above it ``num_draws`` are too few for a reliable PSIS estimate.

    :raises ValueError: ``num_draws`` not an integer >= 2.
    """
    num_draws = check_int("num_draws", num_draws, minimum=2)
    return min(1.0 - 1.0 / math.log10(num_draws), 0.7)


def psis_verdict(khat: float, num_draws: int) -> str:
    r"""The verdict in words on an approximation with Pareto :math:`\hat k` from
    ``num_draws`` draws: ``"good"`` (:math:`\hat k < 0.5`), ``"usable after PSIS
    correction"`` (:math:`\hat k < \kappa(S)`, :func:`khat_threshold`) or ``"not reliable"``
    (otherwise, and for ``nan``); the wording the comparison report uses.

    Example::

        >>> psis_verdict(0.62, 4000), psis_verdict(0.62, 100)
        ('usable after PSIS correction', 'not reliable')
    """
    threshold = khat_threshold(num_draws)
    khat = float(khat)
    if not khat < threshold:  # nan included
        return VERDICTS[2]
    return VERDICTS[0] if khat < 0.5 else VERDICTS[1]


def _group(idata, name: str):
    """Group ``name`` of ``idata`` as an xarray ``Dataset``, or ``None`` if absent."""
    if name not in group_names(idata):
        return None
    ds = idata[name]
    if hasattr(ds, "to_dataset") and not hasattr(ds, "data_vars"):
        ds = ds.to_dataset()  # ArviZ 1.x DataTree node
    return ds


def _flat(da) -> np.ndarray:
    """A ``(chain, draw, ...)`` variable as ``(chain * draw, ...)``."""
    values = np.asarray(da.transpose("chain", "draw", ...).values)
    return values.reshape((-1,) + values.shape[2:])


def _log_parts(idata) -> tuple[np.ndarray, np.ndarray]:
    """``lp`` and ``log_q`` of every draw, chains pooled; ValueError naming what is missing."""
    stats = _group(idata, "sample_stats")
    have = set(stats.data_vars) if stats is not None else set()
    missing = [name for name in ("lp", "log_q") if name not in have]
    if missing:
        raise ValueError(
            f"idata: sample_stats has no {' or '.join(repr(m) for m in missing)}; PSIS needs "
            "the log joint 'lp' and the guide's log density 'log_q' of every draw (a VI "
            "export from from_guide; an MCMC export has no log_q)")
    lp, log_q = _flat(stats["lp"]), _flat(stats["log_q"])
    if lp.shape != log_q.shape or lp.ndim != 1 or lp.size == 0:
        raise ValueError(f"idata: lp and log_q must be one value per draw, got shapes "
                         f"{lp.shape} and {log_q.shape}")
    return lp, log_q


def _smooth(lp: np.ndarray, log_q: np.ndarray) -> tuple[torch.Tensor, float]:
    """Smoothed normalized log weights and k-hat of ``lp - log_q``; ``-inf`` when
    the ratios have no tail: equal to within rounding, or the largest ones all equal."""
    eps = float(np.finfo(np.result_type(lp.dtype, log_q.dtype, np.float32)).eps)
    ratios = torch.as_tensor(lp, dtype=torch.float64) - torch.as_tensor(log_q,
                                                                       dtype=torch.float64)
    finite = torch.isfinite(ratios)
    if not bool(finite.any()):
        raise ValueError("idata: no draw has a finite lp - log_q")
    kept = ratios[finite]
    # rounding error of lp - log_q: a few ulps of the terms summed, on a generous scale
    scale = 1.0 + np.abs(lp).max(initial=0.0, where=np.isfinite(lp)) \
        + np.abs(log_q).max(initial=0.0, where=np.isfinite(log_q))
    if float(kept.max() - kept.min()) <= 1024 * eps * scale:  # the guide is the posterior
        log_w = torch.where(finite, torch.zeros_like(ratios), -math.inf)
        return log_w - torch.logsumexp(log_w, 0), -math.inf
    log_w, khat = psis_smooth(ratios)
    khat = float(khat)
    tail_len = math.ceil(min(0.2 * kept.numel(), 3 * math.sqrt(kept.numel())))
    if math.isinf(khat) and tail_len >= 5 and kept.numel() > tail_len + 1:
        top = torch.topk(kept, tail_len + 1).values
        if bool(top[0] == top[-1]):  # the M + 1 largest ratios are equal: no tail
            khat = -math.inf
    return log_w, khat


def psis_diagnostic(idata) -> float:
    r"""Pareto :math:`\hat k` of the importance ratios
    :math:`\log p(\theta_s, x) - \log q(\theta_s)` of all draws of ``idata`` (chains pooled).

    :param idata: ``InferenceData`` whose ``sample_stats`` hold ``lp`` and ``log_q`` per draw
        (:func:`~pyro_dgm.compare.from_guide`).
    :return: :math:`\hat k` (judge it with :func:`psis_verdict`).
    :raises ValueError: ``sample_stats`` lacks ``lp`` or ``log_q`` (e.g. an MCMC export), or
        no ratio is finite.
    """
    return _smooth(*_log_parts(idata))[1]


def psis_summary(idata) -> dict:
    """``{"khat", "psis_ess", "num_draws", "verdict"}`` of a posterior: computed from ``lp``
    and ``log_q`` for a VI export, taken from the attrs for a :func:`psis_resample` result,
    NaN (verdict ``""``) when neither is there (e.g. MCMC).

    Example::

        >>> psis_summary(from_guide(model, guide, x))["verdict"]
        'good'
    """
    posterior = _group(idata, "posterior")
    attrs = posterior.attrs if posterior is not None else {}
    if "psis_khat" in attrs:
        khat, ess, num = attrs["psis_khat"], attrs["psis_ess"], attrs["psis_num_draws"]
    else:
        stats = _group(idata, "sample_stats")
        if stats is None or "log_q" not in stats.data_vars or "lp" not in stats.data_vars:
            return {"khat": math.nan, "psis_ess": math.nan, "num_draws": 0, "verdict": ""}
        log_w, khat = _smooth(*_log_parts(idata))
        ess, num = float(1.0 / log_w.exp().pow(2).sum()), log_w.numel()
    return {"khat": float(khat), "psis_ess": float(ess), "num_draws": int(num),
            "verdict": psis_verdict(float(khat), int(num))}


def _coords(datasets) -> dict:
    coords = {}
    for ds in datasets:
        for dim in ds.dims:
            if dim not in ("chain", "draw") and dim in ds.coords:
                coords.setdefault(dim, np.asarray(ds.coords[dim].values))
    return coords


def psis_resample(idata, num_samples: int | None = None, *, seed: int | None = None):
    r"""Draws of ``idata`` resampled with replacement with their Pareto-smoothed normalized
    importance weights :math:`\tilde w_s` (PSIS correction of a VI approximation; Yao et al.
    2018, Sec. 3).

    The result has the groups and dimension names of ``idata``, with one chain of
    ``num_samples`` draws: ``posterior``, ``log_likelihood`` and the per-draw
    ``sample_stats`` (``lp``, ...) resampled together, ``observed_data`` and
    ``constant_data`` kept. ``log_q`` is dropped (the resampled draws no longer follow
    :math:`q`); ``sample_stats`` gains ``psis_khat`` and ``psis_ess``
    :math:`= 1/\sum_s \tilde w_s^2` (constant over the draws), which are also set with
    ``psis_verdict`` and ``psis_num_draws`` (the draws they came from) in the attrs of every
    group, next to the input's posterior attrs.

    :param idata: ``InferenceData`` with ``lp`` and ``log_q`` in ``sample_stats``.
    :param num_samples: draws to return (default: as many as ``idata`` has, all chains).
    :param seed: seed of a private generator; default: torch's global RNG
        (``pyro.set_rng_seed``).
    :raises ValueError: as :func:`psis_diagnostic`; ``num_samples`` or ``seed`` not a
        positive (non-negative) integer.

    Example::

        >>> corrected = psis_resample(from_guide(model, guide, x, num_samples=4000), seed=1)
        >>> arviz.summary(corrected)
    """
    log_w, khat = _smooth(*_log_parts(idata))
    total = log_w.numel()
    num = total if num_samples is None else check_int("num_samples", num_samples, minimum=1)
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    weights = log_w.exp()
    ess = float(1.0 / weights.pow(2).sum())
    idx = torch.multinomial(weights, num, replacement=True, generator=generator).numpy()
    groups, dims, sources = {}, {}, []
    for name in _RESAMPLED:
        ds = _group(idata, name)
        if ds is None:
            continue
        sources.append(ds)
        groups[name] = {}
        for var in ds.data_vars:
            if name == "sample_stats" and var == "log_q":
                continue
            values = _flat(ds[var])[idx]
            groups[name][var] = values.reshape((1, num) + values.shape[1:])
            dims.setdefault(str(var), [d for d in ds[var].dims if d not in ("chain", "draw")])
    stats = groups.setdefault("sample_stats", {})
    stats["psis_khat"] = np.full((1, num), khat)
    stats["psis_ess"] = np.full((1, num), ess)
    for name in _KEPT:
        ds = _group(idata, name)
        if ds is not None:
            sources.append(ds)
            groups[name] = {str(v): np.asarray(ds[v].values) for v in ds.data_vars}
            for var in ds.data_vars:
                dims.setdefault(str(var), list(ds[var].dims))
    coords = _coords(sources)
    if is_arviz_1():  # ArviZ 1.x: DataTree, one dict of groups
        out = arviz.from_dict(groups, coords=coords, dims=dims)
    else:
        out = arviz.from_dict(**groups, coords=coords, dims=dims)
    posterior = _group(idata, "posterior")
    attrs = dict(posterior.attrs) if posterior is not None else {}
    attrs.update(psis_khat=khat, psis_ess=ess, psis_verdict=psis_verdict(khat, total),
                 psis_num_draws=total)
    set_attrs(out, attrs)
    return out
