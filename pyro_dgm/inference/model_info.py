"""What a Pyro model looks like, from one trace: its latent and observed sites.

A *prototype* trace (one run of the model, draws from the prior) tells every site's value
shape, its plates (and the ArviZ dimension names they give), whether it is observed, and
the model's plate nesting. Kernels use it to batch chains; the ArviZ export uses it to shape
draws and name dimensions.

Example::

    >>> info = model_info(model, (x,))
    >>> info.latent              # {"beta": torch.Size([3]), "sigma": torch.Size([])}
    >>> info.max_plate_nesting   # 1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

__all__ = ["ModelInfo", "model_info"]


@dataclass
class ModelInfo:
    """What the export needs to know about a model, from one prototype trace."""

    latent: dict[str, torch.Size]  # latent site -> value shape (batch + event)
    observed: dict[str, torch.Tensor]  # observed site -> observed value
    batch_ndim: dict[str, int]  # site -> number of batch dims
    dims: dict[str, list[str]]  # site -> ArviZ dim names of the value
    max_plate_nesting: int
    #: latent site -> dtype of its values (discrete draws may be stored as floats)
    dtypes: dict[str, torch.dtype] | None = None


def _site_dims(name: str, site: dict) -> list[str]:
    value_ndim = site["value"].dim()
    names = [f"{name}_dim_{i}" for i in range(value_ndim)]
    batch_ndim = len(site["fn"].batch_shape)
    for frame in site["cond_indep_stack"]:
        if frame.vectorized and frame.dim is not None and -frame.dim <= batch_ndim:
            names[batch_ndim + frame.dim] = frame.name
    return names


def model_info(model, args: tuple = (), kwargs: dict | None = None) -> ModelInfo:
    """Trace ``model(*args, **kwargs)`` once and describe its sample sites."""
    kwargs = kwargs or {}
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    latent, observed, batch_ndim, dims, dtypes = {}, {}, {}, {}, {}
    nesting = 0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["infer"].get("is_auxiliary"):
            continue
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim is not None:
                nesting = max(nesting, -frame.dim)
        batch_ndim[name] = len(site["fn"].batch_shape)
        dims[name] = _site_dims(name, site)
        if site["is_observed"]:
            observed[name] = site["value"].detach()
        else:
            latent[name] = site["value"].shape
            dtypes[name] = site["value"].dtype
    return ModelInfo(latent, observed, batch_ndim, dims, nesting, dtypes)
