"""Scoring posterior draws through a model: log joint density and pointwise log-likelihood.

Posterior draws are scored for all draws at once by running the model under an outer plate
over draws (the same device Pyro's ``Predictive(parallel=True)`` uses), padding each draw to
the model's plate nesting so that global and local sites broadcast correctly. Models that do
not vectorize fall back to one trace per draw. The sites' shapes come from
:func:`pyro_dgm.inference.model_info`.

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

__all__ = ["score_draws"]


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


def _score_vectorized(model, draws, info, args, kwargs):
    num = next(iter(draws.values())).shape[0]
    data = {name: _pad(v, info, name) for name, v in draws.items()}
    with torch.no_grad(), poutine.block():
        with pyro.plate("_draws", num, dim=-(info.max_plate_nesting + 1)):
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        trace.compute_log_prob()
    pointwise, lp = {}, 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name not in info.batch_ndim:
            continue
        lp = lp + site["log_prob"].reshape(num, -1).sum(-1)
        if name in info.observed:
            raw = site["fn"].log_prob(site["value"])
            shape = info.observed[name].shape[: info.batch_ndim[name]]
            pointwise[name] = raw.reshape((num,) + shape)
    return pointwise, lp


def _score_loop(model, draws, info, args, kwargs):
    num = next(iter(draws.values())).shape[0]
    pointwise = {name: [] for name in info.observed}
    lps = []
    for s in range(num):
        data = {name: _as_site_dtype(v[s], info, name) for name, v in draws.items()}
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        lps.append(trace.log_prob_sum())
        for name in info.observed:
            site = trace.nodes[name]
            pointwise[name].append(site["fn"].log_prob(site["value"]))
    return {k: torch.stack(v) for k, v in pointwise.items()}, torch.stack(lps)


def score_draws(model, draws: dict[str, torch.Tensor], info: ModelInfo, args=(), kwargs=None):
    """Pointwise log-likelihood of every observed site and log joint density per draw.

    :param draws: latent site -> ``(S, *site_shape)`` tensor.
    :return: ``({obs_site: (S, *batch_shape)}, lp (S,))``.
    """
    kwargs = kwargs or {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return _score_vectorized(model, draws, info, args, kwargs)
    except (RuntimeError, ValueError, IndexError):
        # the model does not broadcast over a leading draw dimension: one trace per draw
        return _score_loop(model, draws, info, args, kwargs)
