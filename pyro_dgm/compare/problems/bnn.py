r"""The ``bnn`` model of ``pyro-dgm compare`` on Blundell's 1-D toy regression
(:func:`pyro_dgm.data.blundell_toy_data`; Blundell et al. 2015, Sec. 5.2).

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

    >>> model, x, y, stats = bnn_toy_problem(20, seed=1)

    pyro-dgm compare --model bnn --quick --out report/
"""

from __future__ import annotations

import torch

from pyro_dgm.compare.registry import register_model
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.data.toy_regression import blundell_toy_data
from pyro_dgm.models.bayesian_mlp import BayesianMLP

__all__ = ["BNN_HIDDEN", "BNN_NOISE", "bnn_toy_problem"]

#: hidden width of the registered ``bnn`` model (16 weights)
BNN_HIDDEN = 5
#: fixed noise sd of the registered model, in units of the standardized y
BNN_NOISE = 0.3


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
