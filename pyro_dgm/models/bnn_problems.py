r"""Blundell's 1-D toy regression and the ``bnn`` model of ``pyro-dgm compare``.

Toy data (Blundell et al. 2015, Sec. 5.2):
:math:`y = x + 0.3\sin(2\pi(x + \varepsilon)) + 0.3\sin(4\pi(x + \varepsilon)) + \varepsilon`,
:math:`\varepsilon \sim \mathcal N(0, 0.02^2)`, :math:`x \sim U(0, 0.5)`. We read the paper's
:math:`\mathcal N(0, 0.02)` as sd 0.02, as most reimplementations do; with variance 0.02
the noise inside the sines swamps the curve (residual sd 2.7x the signal's).

The registered ``bnn`` problem is a one-hidden-layer tanh network,
1 -> 5 -> 1 (16 weights and biases) with the noise sd fixed at 0.3, on 20 toy points
(inputs and outputs standardized), with :math:`\mathcal N(0, 1)` weight priors. It is
kept this small so that NUTS finishes ``--quick`` in about a minute; a learned noise sd
and 40 points make NUTS trajectories several times longer. Its weight
posterior is multimodal (hidden units can be permuted and sign-flipped), so per-weight
comparisons between methods mostly show which mode each found; the predictive
distribution is what methods should agree on (see ``tests/models/test_bayesian_mlp.py``
and ``docs/bayes_by_backprop.md``).

Example::

    >>> x, y = blundell_toy_data(20, seed=1)
    >>> pyro-dgm compare --model bnn --quick --out report/
"""

from __future__ import annotations

import math

import torch

from pyro_dgm._validation import check_int
from pyro_dgm.models.bayesian_mlp import BayesianMLP
from pyro_dgm.registry import Problem, Settings, register_model

__all__ = ["BNN_HIDDEN", "BNN_NOISE", "blundell_toy_data", "bnn_toy_problem", "toy_function"]

#: hidden width of the registered ``bnn`` model (16 weights)
BNN_HIDDEN = 5
#: fixed noise sd of the registered model, in units of the standardized y
BNN_NOISE = 0.3


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


def bnn_toy_problem(n: int = 20, hidden: int = BNN_HIDDEN, *, seed: int = 1,
                    noise_scale: float | None = BNN_NOISE,
                    dtype: torch.dtype = torch.float64, device="cpu"):
    """``(model, x, y, stats)``: the standardized toy data and a 1-hidden-layer BNN.

    ``stats = (x_mean, x_sd, y_mean, y_sd)`` undo the standardization;
    ``noise_scale=None`` samples the noise sd (site ``sigma``).
    """
    x, y = blundell_toy_data(n, seed=seed, dtype=dtype, device=device)
    stats = (x.mean(), x.std(), y.mean(), y.std())
    xs, ys = (x - stats[0]) / stats[1], (y - stats[2]) / stats[3]
    model = BayesianMLP(1, [hidden], 1, likelihood="gaussian", noise_scale=noise_scale,
                        dtype=dtype).to(device)
    return model, xs, ys, stats


@register_model("bnn", description="Bayesian neural net 1-5-1 (tanh, 16 weights) on "
                "Blundell's toy regression (20 points)")
def build_bnn(settings: Settings) -> Problem:
    model, x, y, _ = bnn_toy_problem(dtype=settings.dtype, device=settings.device)
    names = [f"{k}{i}" for i in range(2) for k in ("w", "b")]
    return Problem("bnn", model, (x, y), var_names=names,
                   description=f"BNN 1-{BNN_HIDDEN}-1 tanh, {model.num_weights} weights, noise "
                   f"sd {BNN_NOISE}, Blundell toy regression (20 points, standardized)",
                   vectorizable=True, max_plate_nesting=1, jit_compile=True)
