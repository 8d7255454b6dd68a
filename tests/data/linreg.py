"""A user's model for ``pyro-dgm compare --model tests/data/linreg.py:model --data
tests/data/linreg.npz``: Bayesian linear regression with one intercept per group.

    y_n ~ Normal(alpha[g_n] + beta * x_n, sigma),  alpha_k ~ Normal(0, 1) (k < G),
    beta ~ Normal(0, 1),  sigma ~ HalfNormal(1).

The data exercise the integer rule of :func:`pyro_dgm.data.arrays.to_tensors`: ``g`` (an
integer array, a ``torch.long`` index) and ``G`` (an integer scalar, a plate size). The
model broadcasts over a leading particle/chain dimension, so every method vectorizes.

``python tests/data/linreg.py`` rewrites ``linreg.npz`` from :func:`simulate`.
"""

from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
from pyro.ops.indexing import Vindex


def model(x, g, G, y=None):
    alpha = pyro.sample("alpha", dist.Normal(x.new_zeros(G), 1.0).to_event(1))
    beta = pyro.sample("beta", dist.Normal(x.new_zeros(()), 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_ones(())))
    with pyro.plate("data", x.shape[-1]):
        # a leading particle/chain dimension S broadcasts: alpha (S, 1, G) -> (S, N);
        # beta and sigma (S, 1)
        mean = Vindex(alpha)[..., g] + beta * x
        pyro.sample("y", dist.Normal(mean, sigma), obs=y)


def simulate(n: int = 24, groups: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    g = np.arange(n, dtype=np.int64) % groups
    x = rng.normal(size=n)
    y = np.array([-1.0, 0.0, 1.0])[g] + 0.7 * x + 0.5 * rng.normal(size=n)
    return {"x": x, "g": g, "G": np.int64(groups), "y": y}


if __name__ == "__main__":
    np.savez(Path(__file__).with_suffix(".npz"), **simulate())
