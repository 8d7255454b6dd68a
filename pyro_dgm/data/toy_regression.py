r"""Blundell's 1-D toy regression (Blundell et al. 2015, "Weight Uncertainty in Neural
Networks", Sec. 5.2).

:math:`y = x + 0.3\sin(2\pi(x + \varepsilon)) + 0.3\sin(4\pi(x + \varepsilon)) + \varepsilon`,
:math:`\varepsilon \sim \mathcal N(0, 0.02^2)`, :math:`x \sim U(0, 0.5)`. We read the paper's
:math:`\mathcal N(0, 0.02)` as sd 0.02, as most reimplementations do; with variance 0.02
the noise inside the sines swamps the curve (residual sd 2.7x the signal's).

Example::

    >>> x, y = blundell_toy_data(20, seed=1)
    >>> x.shape, y.shape
    (torch.Size([20, 1]), torch.Size([20]))
"""

from __future__ import annotations

import math

import torch

from pyro_dgm._validation import check_int

__all__ = ["blundell_toy_data", "toy_function"]


def toy_function(x: torch.Tensor, eps: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Blundell's toy regression curve at ``x`` with noise ``eps``."""
    return (x + 0.3 * torch.sin(2 * math.pi * (x + eps))
            + 0.3 * torch.sin(4 * math.pi * (x + eps)) + eps)


def blundell_toy_data(n: int = 40, *, seed: int = 0, low: float = 0.0, high: float = 0.5,
                      noise_sd: float = 0.02, dtype: torch.dtype = torch.float64,
                      device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` toy points, ``x`` uniform on ``[low, high]``: returns ``x (n, 1)``, ``y (n,)``."""
    n = check_int("n", n, minimum=1)
    gen = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    eps = noise_sd * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    y = toy_function(x, eps).squeeze(-1)
    return x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)
