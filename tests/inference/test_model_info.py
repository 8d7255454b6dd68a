"""model_info reads a model's structure at a point of its support (issue 20)."""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_dgm.inference.model_info import model_info, point_strategy, support_point


def _site(fn, name="x"):
    return {"name": name, "fn": fn, "args": (), "kwargs": {}}


def test_support_point_without_sampling():
    simplex = dist.ImproperUniform(constraints.simplex, (2,), (4,))
    x = support_point(_site(simplex))
    assert x.shape == (2, 4) and torch.allclose(x.sum(-1), torch.ones(2))
    positive = dist.ImproperUniform(constraints.positive, (3,), ())
    like = torch.zeros((), dtype=torch.float64)
    assert torch.equal(support_point(_site(positive), like=like),
                       torch.ones(3, dtype=torch.float64))
    u = support_point(_site(positive), radius=2.0)
    assert u.shape == (3,) and bool(((u > torch.exp(torch.tensor(-2.0)))
                                     & (u < torch.exp(torch.tensor(2.0)))).all())
    assert support_point(_site(dist.Categorical(torch.ones(3)))).item() == 0


def test_point_strategy_keeps_the_random_stream_of_a_prior_draw():
    fn = dist.Normal(torch.zeros(3), 1.0)
    pyro.set_rng_seed(0)
    expected = fn()
    pyro.set_rng_seed(0)
    assert torch.equal(point_strategy()(_site(fn)), expected)
    given = point_strategy({"x": torch.arange(3.0).reshape(1, 3)})(_site(fn))
    assert torch.equal(given, torch.arange(3.0))  # reshaped to the site's shape


def test_deterministic_sites_are_listed_apart():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        scale = pyro.sample("scale", dist.ImproperUniform(constraints.positive, (), ()))
        with pyro.plate("rows", 5):
            eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
            pyro.deterministic("theta", mu + scale * eta)
            pyro.deterministic("pair", torch.stack([eta, -eta], -1), event_dim=1)
            pyro.sample("y", dist.Normal(mu + scale * eta, 1.0), obs=y)
        pyro.deterministic("scale2", scale ** 2)

    info = model_info(model, (torch.zeros(5),))
    assert set(info.latent) == {"mu", "scale", "eta"}
    assert set(info.observed) == {"y"}
    assert info.deterministic == {"theta": torch.Size([5]), "pair": torch.Size([5, 2]),
                                  "scale2": torch.Size([])}
    assert info.dims["theta"] == ["rows"]
    assert info.dims["pair"] == ["rows", "pair_dim_1"]
    assert info.dims["scale2"] == []
    at = model_info(model, (torch.zeros(5),), values={"scale": torch.tensor(3.0)})
    assert at.latent == info.latent
