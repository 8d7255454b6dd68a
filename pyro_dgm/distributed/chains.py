"""MCMC chains run in several processes, merged along ArviZ's ``chain`` dimension.

Each process runs its chains with ``pyro.set_rng_seed(rank_seed(seed))`` (``seed + rank``)
and converts them with :func:`pyro_dgm.compare.from_mcmc`; :func:`gather_chains` collects
them on every process (``all_gather_object``), :func:`merge_chains` concatenates
``InferenceData`` objects (chains renumbered ``0..C-1``, rank 0's first).

Example::

    >>> pyro.set_rng_seed(rank_seed(0))
    >>> mcmc = pyro.infer.MCMC(NUTS(model), num_samples=500); mcmc.run(x)
    >>> idata = gather_chains(mcmc)            # all processes' chains, on every process
    >>> arviz.rhat(idata)
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch.distributed as dist

__all__ = ["gather_chains", "merge_chains"]


def merge_chains(parts: Sequence):
    """Concatenate ``InferenceData`` objects along ``chain`` (renumbered ``0..C-1``).

    Groups without a ``chain`` dimension (``observed_data``, ``constant_data``) are taken
    from the first part. All parts must have the same variables and number of draws.

    :raises ValueError: no parts, or parts whose groups or draws differ.
    """
    import xarray as xr

    from pyro_dgm.compare._arviz import arviz, group_names

    parts = list(parts)
    if not parts:
        raise ValueError("parts is empty: nothing to merge")
    names = group_names(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if group_names(part) != names:
            raise ValueError(f"parts[{i}] has groups {group_names(part)}, parts[0] {names}")
    groups = {}
    for name in names:
        first = parts[0][name]
        if "chain" not in first.dims:
            groups[name] = first
            continue
        pieces, start = [], 0
        for part in parts:
            ds = part[name]
            if ds.sizes.get("draw") != first.sizes.get("draw"):
                raise ValueError(f"group {name!r}: parts have different numbers of draws")
            n = ds.sizes["chain"]
            pieces.append(ds.assign_coords(chain=list(range(start, start + n))))
            start += n
        groups[name] = xr.concat(pieces, dim="chain", combine_attrs="override")
    return arviz.InferenceData(**groups)


def gather_chains(idata, *, group=None):
    """Collect every process's chains into one ``InferenceData`` on every process.

    :param idata: this process's ``InferenceData``, or a finished :class:`pyro.infer.MCMC`
        (converted with :func:`pyro_dgm.compare.from_mcmc`).
    :param group: a ``torch.distributed`` process group (default: the world).
    :returns: chains of rank 0 first, then rank 1, ...; without a process group, ``idata``.

    Run each process's chains with ``pyro.set_rng_seed(rank_seed(seed))`` so they differ.
    """
    if isinstance(idata, pyro.infer.MCMC):
        from pyro_dgm.compare import from_mcmc

        idata = from_mcmc(idata)
    if not (dist.is_available() and dist.is_initialized()):
        return idata
    parts = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, idata, group=group)
    return merge_chains(parts)
