"""The data plate every model in :mod:`pyro_dgm.models` shares.

Minibatch conventions (the same in model and guide, so distributed data loaders can hand
out indices):

- ``x`` alone: the full data set, ``N = len(x)``.
- ``x`` and ``subsample=idx``: ``x`` is the full data set; the batch is ``x[idx]`` and the
  log-likelihood is scaled by ``N / len(idx)``.
- ``x``, ``subsample=idx`` and ``num_data=N``: ``x`` already is the batch ``x[idx]``.
- ``num_data=N`` without ``x``: prior predictive over ``N`` rows.

Example::

    >>> def model(x, subsample=None, num_data=None):
    ...     with data_plate(x, subsample=subsample, num_data=num_data) as batch:
    ...         pyro.sample("x", dist.Normal(0.0, 1.0).to_event(1), obs=batch)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import torch

__all__ = ["data_plate"]


@contextmanager
def data_plate(
    x: torch.Tensor | None,
    *,
    subsample: torch.Tensor | None = None,
    num_data: int | None = None,
    name: str = "data",
    dim: int | None = None,
) -> Iterator[torch.Tensor | None]:
    """Enter ``pyro.plate(name, N, subsample=...)`` and yield the batch of ``x`` it covers."""
    if x is None and num_data is None:
        raise ValueError("pass data x, or num_data to sample from the prior")
    size = int(num_data) if num_data is not None else x.shape[0]
    if x is not None and subsample is not None and num_data is not None:
        if len(subsample) != x.shape[0]:
            raise ValueError(
                "with num_data, x must be the batch x[subsample]: got "
                f"{x.shape[0]} rows for {len(subsample)} indices")
    with pyro.plate(name, size, subsample=subsample, dim=dim) as idx:
        batch = x
        if x is not None and num_data is None and subsample is not None:
            batch = x.index_select(0, idx.to(x.device))
        yield batch
