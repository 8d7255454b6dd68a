"""Floating-point dtypes by name (the names are :data:`pyro_dgm.defaults.DTYPE_NAMES`).

Torch is imported only when a name is resolved, so the command line can offer the names
without loading it.

Example::

    >>> to_dtype("float32")
    torch.float32
"""

from __future__ import annotations

from pyro_dgm.defaults import DTYPE_NAMES

__all__ = ["DTYPE_NAMES", "to_dtype"]


def to_dtype(name: str):
    """The ``torch.dtype`` called ``name``; ``ValueError`` naming ``dtype`` otherwise."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    import torch

    return getattr(torch, name)
