"""Named arrays (a model's data) to the tensors and numbers a Pyro model takes.

One rule for every data set a model is called with by keyword — a user's ``.npz``/``.json``/
``.csv`` file (``pyro-dgm compare --model PATH.py:FUNCTION --data FILE``) and the vendored
posteriordb data alike:

- a floating-point array becomes a tensor of ``dtype`` on ``device``;
- an integer array (counts, group indices, Stan's ``array[N] int``) becomes a ``torch.long``
  tensor on ``device``; a boolean array a ``torch.bool`` tensor;
- an integer or boolean *scalar* (sizes such as Stan's ``int<lower=1> N``) becomes a Python
  ``int``/``bool``, so it can size plates and loops; a floating-point scalar a 0-d tensor.

Example::

    >>> import numpy as np, torch
    >>> data = to_tensors({"N": np.int64(3), "y": np.array([0.5, 1.0, 2.0])},
    ...                   dtype=torch.float64)
    >>> data["N"], data["y"].dtype
    (3, torch.float64)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["to_tensors"]


def to_tensors(arrays: Mapping[str, Any], *, dtype: torch.dtype = torch.float64,
               device: str | torch.device = "cpu") -> dict[str, Any]:
    """Convert named arrays to model arguments (see the module docstring for the rule).

    :param arrays: name -> array-like (numpy array, number, nested list of numbers).
    :param dtype: floating-point dtype of the real-valued arrays.
    :param device: device of every tensor.
    :raises ValueError: naming the array that is not numeric (strings, objects, ragged
        lists).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype: must be a floating-point torch.dtype, got {dtype!r}")
    out: dict[str, Any] = {}
    for name, value in arrays.items():
        try:
            array = np.asarray(value)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"data {name!r}: not a rectangular numeric array ({e})") from None
        kind = array.dtype.kind
        if kind not in "biuf":
            raise ValueError(f"data {name!r}: not numeric (dtype {array.dtype})")
        if array.ndim == 0 and kind in "biu":
            out[name] = bool(array) if kind == "b" else int(array)
        elif kind == "b":
            out[name] = torch.as_tensor(array, device=device)
        elif kind in "iu":
            out[name] = torch.as_tensor(array.astype(np.int64), device=device)
        else:
            out[name] = torch.as_tensor(array, dtype=dtype, device=device)
    return out
