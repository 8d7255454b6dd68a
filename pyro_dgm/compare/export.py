"""ArviZ export of MCMC runs and trained guides.

Both functions build on :func:`arviz.from_dict` (present in ArviZ 0.x and 1.x) and give the
same groups and variable shapes, so MCMC and VI posteriors of one model line up in ArviZ:

- ``posterior``: every latent sample site and every ``pyro.deterministic`` site, shape
  ``(chain, draw, *site_shape)`` with Pyro's plate-padding singleton dimensions removed and
  plate dimensions named after the plate;
- ``sample_stats``: ``lp`` (log joint density log p(θ, x)) per draw; for VI also ``log_q``,
  the guide's log density of the same (constrained) draw with the Jacobians of Pyro's
  constraint transforms as the guide scores them (so ``lp - log_q`` are the importance
  ratios of :func:`~pyro_dgm.compare.psis_diagnostic`); for MCMC what the kernel reports
  (``diverging``, ``acceptance_rate``, ``step_size``, ...);
- ``log_likelihood``: pointwise log-likelihood of every observed site per draw;
- ``observed_data``: the observed values.

``lp``, the log-likelihoods and the deterministic sites come from one pass of the model over
the draws (see :mod:`pyro_dgm.compare._scoring`), chunked so that its intermediates stay
within ``memory_mb``; with ``lp=False, log_likelihood=False`` and no deterministic sites
(or ``deterministic=False``) the model is not run over the draws at all. The model's
structure is read at the first draw, so improper priors are no obstacle.

:func:`from_guide` warns (:class:`UntrainedGuideWarning`) when a guide looks never trained, so
that its initial distribution is not taken for a posterior. Whether a parameter was ever
optimized is not recorded anywhere, so the rule is practical: a guide counts as untrained
when it has parameters (the ``pyro.param`` / ``PyroParam`` sites of one run of it; an
AutoGuide creates them on its first call) and none of them, as its unconstrained leaf tensor,
has a gradient (``.grad`` is set by ``backward()``; Pyro's ``SVI.step`` leaves zeros there)
or was ever changed in place (torch's version counter ``tensor._version``, which optimizer
steps, ``load_state_dict``, ``copy_`` and ``ParamStoreDict.load`` advance). Limits: a guide
whose parameters were changed only through ``.data`` (``ClippedAdam`` does so) and whose
gradients were then set to ``None`` (``optimizer.zero_grad()`` in a torch loop) is reported
as untrained although it moved; a guide trained in part (one parameter stepped) is not
reported; guides without parameters (a Laplace approximation's buffers, a fitted
Pathfinder) are never reported.

Example::

    >>> mcmc = MCMC(NUTS(model), num_samples=500, num_chains=2); mcmc.run(x)
    >>> idata_nuts = from_mcmc(mcmc)
    >>> svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO()); ...
    >>> idata_vi = from_guide(model, guide, x, num_samples=1000)
    >>> arviz.summary(idata_nuts), arviz.summary(idata_vi)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_dgm._validation import check_int
from pyro_dgm.compare._arviz import arviz, is_arviz_1, set_attrs
from pyro_dgm.compare._scoring import DEFAULT_SCORE_MEMORY_MB, score_draws
from pyro_dgm.inference.model_info import ModelInfo, model_info

__all__ = ["UntrainedGuideWarning", "from_guide", "from_mcmc", "to_inference_data",
           "untrained_parameters"]


class UntrainedGuideWarning(UserWarning):
    """:func:`from_guide` was given a guide whose parameters look never optimized."""


def untrained_parameters(guide_trace) -> list[str]:
    """Names of the parameter sites of ``guide_trace`` (one run of a guide) when none of
    them was ever stepped (no ``.grad``, version counter 0 on the unconstrained leaf), else
    ``[]``; ``[]`` also for a guide without parameters. See the module doc for the rule."""
    names, touched = [], False
    for name, node in guide_trace.nodes.items():
        if node["type"] != "param":
            continue
        value = node["value"]
        leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
        names.append(name)
        touched = touched or leaf.grad is not None or leaf._version > 0
    return [] if touched else names


def _numpy(value) -> np.ndarray:
    if torch.is_tensor(value):
        value = value.detach().cpu()
        if value.dtype == torch.bool:
            return value.numpy()
        return value.numpy() if value.is_floating_point() else value.double().numpy()
    return np.asarray(value)


def to_inference_data(
    posterior: dict[str, torch.Tensor],
    info: ModelInfo,
    *,
    model=None,
    args: tuple = (),
    kwargs: dict | None = None,
    sample_stats: dict[str, torch.Tensor] | None = None,
    log_likelihood: bool = True,
    lp: bool = True,
    deterministic: bool = True,
    chunk_size: int | None = None,
    memory_mb: float = DEFAULT_SCORE_MEMORY_MB,
    attrs: dict | None = None,
):
    """Assemble ``InferenceData`` from ``(chain, draw, ...)`` posterior tensors.

    ``sample_stats`` entries are ``(chain, draw)`` tensors. When ``model`` is given, the
    draws are scored through it (in chunks of ``chunk_size`` draws, by default as many as fit
    in ``memory_mb`` MB of intermediates) for the log joint ``lp``, the pointwise
    log-likelihoods (``log_likelihood``) and the deterministic sites (``deterministic``);
    the pass is skipped when none of them is wanted.
    """
    chains, draws = next(iter(posterior.values())).shape[:2]
    stats = dict(sample_stats or {})
    loglik, posterior = {}, dict(posterior)
    want_det = deterministic and bool(info.deterministic)
    if model is not None and (lp or log_likelihood or want_det):
        flat = {k: v.reshape((chains * draws,) + v.shape[2:]) for k, v in posterior.items()}
        found: dict = {}
        pointwise, lp_draws = score_draws(
            model, flat, info, args, kwargs, deterministic=found if want_det else None,
            log_likelihood=log_likelihood, chunk_size=chunk_size, memory_mb=memory_mb)
        if lp:
            stats["lp"] = lp_draws.reshape(chains, draws)
        if log_likelihood:
            loglik = {k: v.reshape((chains, draws) + v.shape[1:]) for k, v in pointwise.items()}
        posterior.update({k: v.reshape((chains, draws) + v.shape[1:])
                          for k, v in found.items()})
    # observed sites: name the plate (batch) dims only, so the same names fit both the
    # observed values and their pointwise log-likelihoods (ArviZ names the event dims)
    dims = {name: names[: info.batch_ndim[name]] if name in info.observed else names
            for name, names in info.dims.items()
            if name in posterior or name in info.observed}
    groups = {
        "posterior": {k: _numpy(v) for k, v in posterior.items()},
        "sample_stats": {k: _numpy(v) for k, v in stats.items()},
        "log_likelihood": {k: _numpy(v) for k, v in loglik.items()},
        "observed_data": {k: _numpy(v) for k, v in info.observed.items()},
    }
    groups = {k: v for k, v in groups.items() if v}
    attrs = {"inference_library": "pyro", "created_by": "pyro_dgm", **(attrs or {})}
    if is_arviz_1():  # ArviZ 1.x: DataTree, one dict of groups
        idata = arviz.from_dict(groups, dims=dims)
    else:
        idata = arviz.from_dict(
            posterior=groups.get("posterior"),
            sample_stats=groups.get("sample_stats"),
            log_likelihood=groups.get("log_likelihood"),
            observed_data=groups.get("observed_data"),
            dims=dims,
        )
    set_attrs(idata, attrs)
    return idata


def _kernel_stats(mcmc, chains: int, draws: int) -> tuple[dict, dict]:
    """Per-draw ``sample_stats`` and per-chain attrs from ``MCMC`` diagnostics."""
    diagnostics = getattr(mcmc, "_diagnostics", None) or []
    stats: dict[str, torch.Tensor] = {}
    attrs: dict = {}
    diverging = torch.zeros(chains, draws, dtype=torch.bool)
    def column(name):
        return stats.setdefault(name, torch.full((chains, draws), float("nan"),
                                                 dtype=torch.float64))

    for c, diag in enumerate(diagnostics):
        for key, value in (diag or {}).items():
            name = key.replace(" ", "_")
            if key == "divergences":
                idx = torch.as_tensor(list(value), dtype=torch.long).reshape(-1)
                diverging[c, idx[(idx >= 0) & (idx < draws)]] = True
                continue
            value = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
            if value.numel() == draws:  # a per-draw record from the kernel
                column(name)[c] = value.reshape(draws)
            elif value.numel() == 1:  # a per-chain summary: broadcast over the draws
                column(name)[c] = float(value)
                attrs[f"{name}_chain_{c}"] = float(value)
    stats["diverging"] = diverging
    step = getattr(getattr(mcmc, "kernel", None), "step_size", None)
    if "step_size" not in stats and chains == 1 and isinstance(step, (int, float)):
        stats["step_size"] = torch.full((chains, draws), float(step), dtype=torch.float64)
    return stats, attrs


def from_mcmc(
    mcmc: pyro.infer.MCMC,
    *,
    model: Callable | None = None,
    model_args: tuple | None = None,
    model_kwargs: dict | None = None,
    log_likelihood: bool = True,
    lp: bool = True,
    deterministic: bool = True,
    chunk_size: int | None = None,
    memory_mb: float = DEFAULT_SCORE_MEMORY_MB,
    attrs: dict | None = None,
):
    """Convert a finished :class:`pyro.infer.MCMC` run to ``arviz.InferenceData``.

    Works for any kernel, including those that report no ``"divergences"`` (Pyro's
    ``RandomWalkKernel``); per-chain diagnostics (acceptance rate) are broadcast over
    draws, per-draw records returned by a kernel's ``diagnostics()`` are kept as they are.

    :param mcmc: a run whose ``run(*args, **kwargs)`` has finished.
    :param model: the model; defaults to ``mcmc.kernel.model``.
    :param model_args: defaults to the arguments ``mcmc.run`` was called with.
    :param log_likelihood: compute the ``log_likelihood`` group (``draws x`` the data's size
        in memory).
    :param lp: compute ``sample_stats.lp``.
    :param deterministic: add the model's ``pyro.deterministic`` sites to ``posterior``.
    :param chunk_size: draws per scoring run of the model; default: as many as fit in
        ``memory_mb`` MB of intermediates.
    """
    samples = mcmc.get_samples(group_by_chain=True)
    if not samples:
        raise ValueError("mcmc has no samples: call mcmc.run(...) first")
    model = model if model is not None else getattr(mcmc.kernel, "model", None)
    args = tuple(model_args if model_args is not None else (mcmc._args or ()))
    kwargs = dict(model_kwargs if model_kwargs is not None else (mcmc._kwargs or {}))
    chains, draws = next(iter(samples.values())).shape[:2]
    if model is not None:  # the model's structure, read at the first draw
        info = model_info(model, args, kwargs,
                          values={k: v[0, 0] for k, v in samples.items()})
        samples = {k: v.reshape((chains, draws) + info.latent.get(k, v.shape[2:]))
                   for k, v in samples.items()}
    else:
        info = ModelInfo({k: v.shape[2:] for k, v in samples.items()}, {},
                         {k: 0 for k in samples}, {}, 0)
    stats, stat_attrs = _kernel_stats(mcmc, chains, draws)
    attrs = {"inference_kind": "mcmc", "kernel": type(mcmc.kernel).__name__,
             **stat_attrs, **(attrs or {})}
    return to_inference_data(samples, info, model=model, args=args, kwargs=kwargs,
                             sample_stats=stats, log_likelihood=log_likelihood, lp=lp,
                             deterministic=deterministic, chunk_size=chunk_size,
                             memory_mb=memory_mb, attrs=attrs)


def _per_draw(log_prob: torch.Tensor, num: int, draw_dim: int) -> torch.Tensor:
    """Sum a site's log density over everything but the draws plate (at ``draw_dim``)."""
    if log_prob.dim() < -draw_dim:
        log_prob = log_prob.reshape((1,) * (-draw_dim - log_prob.dim()) + log_prob.shape)
    log_prob = log_prob.movedim(draw_dim, 0)
    return log_prob.expand((num,) + log_prob.shape[1:]).reshape(num, -1).sum(-1)


def _guide_draws(guide, info: ModelInfo, num: int, args, kwargs):
    """``num`` joint draws of the model's latent sites from ``guide``, ``(num, *shape)``,
    and the guide's log density of each draw, ``log q`` ``(num,)``: the sum over the guide
    trace's sample sites (auxiliary sites included, e.g. an autoguide's unconstrained
    Gaussian, and the ``Delta`` sites carrying the constraint transforms' log-Jacobians) —
    the density of the constrained draw, as the guide itself scores it."""
    draw_dim = -(info.max_plate_nesting + 1)
    try:
        with torch.no_grad(), poutine.block():
            with pyro.plate("_draws", num, dim=draw_dim):
                trace = poutine.trace(guide).get_trace(*args, **kwargs)
            trace.compute_log_prob(site_filter=lambda name, site: not site_is_subsample(site))
        log_q = sum(_per_draw(site["log_prob"], num, draw_dim)
                    for site in trace.nodes.values()
                    if site["type"] == "sample" and "log_prob" in site)
        return {k: trace.nodes[k]["value"].reshape((num,) + shape)
                for k, shape in info.latent.items()}, log_q
    except (RuntimeError, ValueError, IndexError):
        draws, log_q = {k: [] for k in info.latent}, []
        for _ in range(num):
            with torch.no_grad(), poutine.block():
                trace = poutine.trace(guide).get_trace(*args, **kwargs)
                log_q.append(trace.log_prob_sum(
                    site_filter=lambda name, site: not site_is_subsample(site)))
            for k, shape in info.latent.items():
                draws[k].append(trace.nodes[k]["value"].reshape(shape))
        return {k: torch.stack(v) for k, v in draws.items()}, torch.stack(log_q)


def from_guide(
    model: Callable,
    guide: Callable | Sequence[Callable],
    *args,
    num_samples: int = 1000,
    log_likelihood: bool = True,
    lp: bool = True,
    deterministic: bool = True,
    chunk_size: int | None = None,
    memory_mb: float = DEFAULT_SCORE_MEMORY_MB,
    attrs: dict | None = None,
    **kwargs,
):
    """Draw ``num_samples`` from a trained guide and export them like :func:`from_mcmc`.

    :param model: the model the guide was trained for.
    :param guide: a trained guide, or a list of independently trained guides, which become
        the chains of the result.
    :param args: model/guide arguments (the data); ``kwargs`` likewise.
    :param num_samples: draws per guide.
    :param log_likelihood: ``lp``, ``deterministic``, ``chunk_size``, ``memory_mb``: as for
        :func:`from_mcmc`.
    :warns UntrainedGuideWarning: naming the parameters of a guide that looks never trained
        (see :func:`untrained_parameters`).
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    guides = list(guide) if isinstance(guide, (list, tuple)) else [guide]
    if not guides:
        raise ValueError("guide: need at least one guide")
    info = model_info(model, args, kwargs)
    if not info.latent:
        raise ValueError("model has no latent sample sites to export")
    for i, g in enumerate(guides):  # a guide must cover every latent site of the model
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(g).get_trace(*args, **kwargs)
        missing = sorted(set(info.latent) - set(trace.nodes))
        if missing:
            raise ValueError(f"guide has no sample site for model latent(s) {missing}")
        untrained = untrained_parameters(trace)
        if untrained:
            which = f"guide {i}" if len(guides) > 1 else "the guide"
            shown = ", ".join(map(repr, untrained[:4])) + (", ..." if len(untrained) > 4 else "")
            warnings.warn(
                f"from_guide: {which} looks never trained: its parameters ({shown}) have no "
                "gradient and were never changed in place, so they are still at their initial "
                "values and the export is the initial distribution, not a posterior; train it "
                "(e.g. SVI(...).step) first", UntrainedGuideWarning, stacklevel=2)
    per_chain = [_guide_draws(g, info, num_samples, args, kwargs) for g in guides]
    posterior = {k: torch.stack([d[k] for d, _ in per_chain]) for k in info.latent}
    log_q = torch.stack([q for _, q in per_chain])
    attrs = {"inference_kind": "vi", "guide": type(guides[0]).__name__, **(attrs or {})}
    return to_inference_data(posterior, info, model=model, args=args, kwargs=kwargs,
                             sample_stats={"log_q": log_q},
                             log_likelihood=log_likelihood, lp=lp, deterministic=deterministic,
                             chunk_size=chunk_size, memory_mb=memory_mb, attrs=attrs)
