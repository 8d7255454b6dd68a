r"""The 8×8 digits as continuous, standardized data (for Gaussian likelihoods).

Pixel intensities of :func:`~pyro_dgm.data.load_digits` (``binarize=None``), centred and
scaled per pixel with the mean and standard deviation of the fixed *training* split (pixels
that are constant there, e.g. always-blank corners, get scale 1), so train and test share
one transformation and no test statistic leaks into it:

.. math:: \tilde x_{ni} = (x_{ni} - \bar x_i) / s_i .

Example::

    >>> x = load_digits_standardized()              # (1500, 64), each column mean 0
    >>> x_test = load_digits_standardized(split="test")
"""

from __future__ import annotations

import torch

from pyro_dgm.data.digits import load_digits

__all__ = ["load_digits_standardized"]


def load_digits_standardized(*, split: str = "train", max_rows: int | None = None,
                             dtype: torch.dtype | None = None,
                             device: torch.device | str | None = None) -> torch.Tensor:
    """Standardized digits of ``split`` (statistics of the full training split)."""
    train = load_digits(binarize=None, split="train", dtype=torch.float64)
    mean, sd = train.mean(0), train.std(0, unbiased=False)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    x = load_digits(binarize=None, split=split, max_rows=max_rows, dtype=torch.float64)
    dtype = dtype or torch.get_default_dtype()
    return ((x - mean) / sd).to(dtype=dtype, device=device)
