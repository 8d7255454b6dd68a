r"""Plumbing that models, inference and layers share, kept below all of them.

Nothing here knows about a model, an objective or the comparison; the modules of
:mod:`pyro_dgm.models`, :mod:`pyro_dgm.inference` and :mod:`pyro_dgm.nn` import it instead of
importing each other (see ``docs/architecture.md``).

- :func:`data_plate`: the data plate every model and amortized guide shares. Minibatch
  conventions (the same in model and guide, so distributed data loaders can hand out
  indices):

  - ``x`` alone: the full data set, ``N = len(x)``;
  - ``x`` and ``subsample=idx``: ``x`` is the full data set; the batch is ``x[idx]`` and the
    log-likelihood is scaled by ``N / len(idx)``;
  - ``x``, ``subsample=idx`` and ``num_data=N``: ``x`` already is the batch ``x[idx]``;
  - ``num_data=N`` without ``x``: prior predictive over ``N`` rows.

- :func:`inverse_softplus`: :math:`\rho = \log(e^\sigma - 1)`;
- :func:`mlp`: linear layers with an activation between them.

Example::

    >>> def model(x, subsample=None, num_data=None):
    ...     with data_plate(x, subsample=subsample, num_data=num_data) as batch:
    ...         pyro.sample("x", dist.Normal(0.0, 1.0).to_event(1), obs=batch)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pyro
import torch
from torch import nn

__all__ = ["data_plate", "inverse_softplus", "mlp"]


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


def inverse_softplus(sigma: torch.Tensor | float) -> torch.Tensor | float:
    r""":math:`\rho = \log(e^\sigma - 1) = \sigma + \log(1 - e^{-\sigma})`, the inverse of
    ``softplus``, stable for small and large ``sigma``. A tensor gives a tensor of its
    dtype and device; a Python number gives a float.

    Example::

        >>> torch.nn.functional.softplus(inverse_softplus(torch.tensor(0.05)))
        tensor(0.0500)
    """
    if torch.is_tensor(sigma):
        return sigma + torch.log(-torch.expm1(-sigma))
    return float(inverse_softplus(torch.tensor(float(sigma), dtype=torch.float64)))


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.Tanh, *,
        out_scale: float | None = None) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` between them (none after the last).

    :param out_scale: if given, the last layer's weights are multiplied by it and its bias
        zeroed (0: a flow's conditioner outputs 0, so the flow starts at the identity; the
        last layer gets gradient from the first step, the layers before it once it moved).

    Example::

        >>> mlp([4, 32, 32, 2], nn.ReLU, out_scale=1e-2)
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    if out_scale is not None:
        with torch.no_grad():
            layers[-1].weight.mul_(out_scale)
            layers[-1].bias.zero_()
    return nn.Sequential(*layers)
