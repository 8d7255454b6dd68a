"""Scoring posterior draws through a model: log joint density, pointwise log-likelihood and
the values of ``pyro.deterministic`` sites.

Posterior draws are scored by running the model under an outer plate over draws (the same
device Pyro's ``Predictive(parallel=True)`` uses), padding each draw to the model's plate
nesting so that global and local sites broadcast correctly. The draws go through in chunks,
so the intermediates of one run stay within a memory budget (:func:`chunk_draws`); the
results are written into tensors allocated once. Models that do not broadcast fall back to
one trace per draw. The sites' shapes come from :func:`pyro_dgm.inference.model_info`.

Example::

    >>> info = model_info(model, (x,))
    >>> pointwise, lp = score_draws(model, {"beta": draws}, info, (x,))
"""

from __future__ import annotations

import warnings

import pyro
import torch
from pyro import poutine

from pyro_dgm.inference.model_info import ModelInfo

__all__ = ["DEFAULT_SCORE_MEMORY_MB", "chunk_draws", "score_draws"]

#: default budget, in MB, for the intermediates of one scoring run (see :func:`chunk_draws`)
DEFAULT_SCORE_MEMORY_MB = 64.0
#: tensors of the data's size one draw may create while it is scored (a broadcast product
#: of the design matrix with the coefficients, its sum, the log density, ...)
_COPIES_PER_DRAW = 4


def _pad(value: torch.Tensor, info: ModelInfo, name: str) -> torch.Tensor:
    """Reshape ``(S, *site_shape)`` so the draw dim sits left of every plate dim."""
    pad = info.max_plate_nesting - info.batch_ndim[name]
    return _as_site_dtype(value.reshape(value.shape[:1] + (1,) * pad + value.shape[1:]),
                          info, name)


def _as_site_dtype(value: torch.Tensor, info: ModelInfo, name: str) -> torch.Tensor:
    """Cast a draw back to the dtype the model produces (Gibbs stores discrete draws as
    floats; a model may index with them)."""
    dtype = (info.dtypes or {}).get(name)
    return value if dtype is None or value.dtype == dtype else value.to(dtype)


def _per_draw(value: torch.Tensor, num: int, shape: torch.Size, name: str) -> torch.Tensor:
    """A deterministic site's value from a run under the draws plate, as ``(num, *shape)``:
    the plate padding (singleton dims) removed; a value that does not depend on the draws is
    broadcast over them."""
    def squeezed(dims):
        return [d for d in dims if d != 1]

    if value.dim() and value.shape[0] == num and squeezed(value.shape[1:]) == squeezed(shape):
        return value.reshape((num,) + shape)
    if value.numel() == shape.numel():
        return value.reshape(shape).expand((num,) + shape)
    raise ValueError(f"deterministic site {name!r}: its value of shape {tuple(value.shape)} "
                     f"under a plate of {num} draws does not fit ({num}, *{tuple(shape)})")


def _score_vectorized(model, draws, info, args, kwargs, deterministic: dict | None = None,
                      pointwise: bool = True):
    """One run of the model for all ``draws``; fills ``deterministic`` (when given) with the
    deterministic sites' values; ``pointwise=False`` leaves the log-likelihoods out."""
    num = next(iter(draws.values())).shape[0]
    data = {name: _pad(v, info, name) for name, v in draws.items()}
    with torch.no_grad(), poutine.block():
        with pyro.plate("_draws", num, dim=-(info.max_plate_nesting + 1)):
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        trace.compute_log_prob(lambda name, site: name in info.latent or name in info.observed)
    loglik, lp = {}, 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        if name in info.deterministic:
            if deterministic is not None:
                deterministic[name] = _per_draw(site["value"], num, info.deterministic[name],
                                                name)
            continue
        if name not in info.latent and name not in info.observed:
            continue
        site_lp = site["log_prob"]
        if site_lp.dim() != info.max_plate_nesting + 1 or site_lp.shape[0] != num:
            # e.g. a (draws, 1) scale against (draws, 1, rows) means: (draws, draws, rows)
            raise ValueError(f"site {name!r}: log density of shape {tuple(site_lp.shape)} "
                             f"under a plate of {num} draws; the model does not broadcast")
        lp = lp + site_lp.reshape(num, -1).sum(-1)
        if name in info.observed and pointwise:
            raw = site["fn"].log_prob(site["value"])
            shape = info.observed[name].shape[: info.batch_ndim[name]]
            loglik[name] = raw.reshape((num,) + shape)
    return loglik, lp


def _score_loop(model, draws, info, args, kwargs, deterministic: dict | None = None,
                pointwise: bool = True):
    """One trace per draw (models that do not broadcast over a draws dimension)."""
    num = next(iter(draws.values())).shape[0]
    loglik = {name: [] for name in info.observed if pointwise}
    values = {name: [] for name in info.deterministic}
    lps = []
    for s in range(num):
        data = {name: _as_site_dtype(v[s], info, name) for name, v in draws.items()}
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        lps.append(torch.as_tensor(trace.log_prob_sum(
            lambda name, site: name in info.latent or name in info.observed)))
        for name in info.observed if pointwise else ():
            site = trace.nodes[name]
            loglik[name].append(site["fn"].log_prob(site["value"]))
        for name, shape in info.deterministic.items():
            values[name].append(trace.nodes[name]["value"].reshape(shape))
    if deterministic is not None:
        deterministic.update({k: torch.stack(v) for k, v in values.items()})
    return {k: torch.stack(v) for k, v in loglik.items()}, torch.stack(lps)


def _nbytes(x) -> int:
    return x.numel() * x.element_size() if torch.is_tensor(x) else 0


def chunk_draws(info: ModelInfo, draws: dict[str, torch.Tensor], args=(), kwargs=None,
                memory_mb: float = DEFAULT_SCORE_MEMORY_MB) -> int:
    """Draws scored per model run so that its intermediates stay within ``memory_mb``.

    One draw is counted as :data:`_COPIES_PER_DRAW` copies of the model's data (its tensor
    arguments and observed values: the size of a broadcast product of a design matrix with
    the coefficients) plus its own latent values; at least one draw per run.
    """
    if not memory_mb > 0:
        raise ValueError(f"memory_mb: must be positive, got {memory_mb!r}")
    data = sum(_nbytes(a) for a in (*args, *(kwargs or {}).values()))
    data += sum(_nbytes(v) for v in info.observed.values())
    per_draw = _COPIES_PER_DRAW * data + sum(_nbytes(v[0]) for v in draws.values())
    return max(1, int(memory_mb * 2**20 // max(per_draw, 1)))


def _check_finite(name: str, value: torch.Tensor, what: str) -> None:
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).reshape(value.shape[0], -1).any(-1).sum())
        warnings.warn(f"{what} {name!r}: non-finite at {bad} of {value.shape[0]} draws",
                      RuntimeWarning, stacklevel=3)


def score_draws(model, draws: dict[str, torch.Tensor], info: ModelInfo, args=(), kwargs=None,
                *, deterministic: dict | None = None, log_likelihood: bool = True,
                chunk_size: int | None = None, memory_mb: float = DEFAULT_SCORE_MEMORY_MB):
    """Pointwise log-likelihood of every observed site and log joint density per draw.

    :param draws: latent site -> ``(S, *site_shape)`` tensor.
    :param deterministic: a dict that receives deterministic site -> ``(S, *shape)``.
    :param log_likelihood: keep the pointwise log-likelihoods (``S x`` the data's size).
    :param chunk_size: draws per model run; default from ``memory_mb`` (:func:`chunk_draws`).
    :return: ``({obs_site: (S, *batch_shape)}, lp (S,))``.
    """
    kwargs = kwargs or {}
    num = next(iter(draws.values())).shape[0]
    if chunk_size is None:
        chunk_size = chunk_draws(info, draws, args, kwargs, memory_mb)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: must be a positive int, got {chunk_size!r}")
    pointwise, lp, values = {}, None, {}
    score = _score_vectorized
    for start in range(0, num, chunk_size):
        part = {k: v[start:start + chunk_size] for k, v in draws.items()}
        found: dict = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                pw, lp_part = score(model, part, info, args, kwargs, found, log_likelihood)
        except (RuntimeError, ValueError, IndexError):
            if score is _score_loop or start > 0:
                raise
            # the model does not broadcast over a leading draw dimension: one trace per draw
            score = _score_loop
            pw, lp_part = score(model, part, info, args, kwargs, found, log_likelihood)
        end = start + lp_part.shape[0]
        if lp is None:  # allocate the results once, from the first chunk's dtypes
            lp = lp_part.new_empty((num,))
            outputs = {**pw, **found}
            for k, v in outputs.items():
                (pointwise if k in pw else values)[k] = v.new_empty((num,) + v.shape[1:])
        lp[start:end] = lp_part
        for k, v in pw.items():
            pointwise[k][start:end] = v
        for k, v in found.items():
            values[k][start:end] = v
    if deterministic is not None:
        deterministic.update(values)
        for k, v in values.items():
            _check_finite(k, v, "deterministic site")
    return pointwise, lp
