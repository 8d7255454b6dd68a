"""map_start's guarded L-BFGS, the shared MAP of one comparison, and full-rank ADVI started
at the MAP."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoLaplaceApproximation, init_to_median

import pyro_dgm.compare.methods.pyro as pyro_methods
import pyro_dgm.compare.methods.starts as starts
from pyro_dgm.compare.methods.pyro import fit_fullrank
from pyro_dgm.compare.methods.starts import map_start, shared_map_start
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.models.posteriordb.improper import FlatPrior

#: the cliff model's pull towards its edge at x = -3
PULL = 100.0


def cliff():
    r""":math:`\log p(x) = -x^2/2 - 100 x + \log(x + 3)` (+ const): defined for
    :math:`x > -3` only, where the model does not declare it (NaN beyond the edge, like an
    ``exp`` that overflows). Its mode solves :math:`x + 100 - 1/(x + 3) = 0`."""
    x = pyro.sample("x", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    pyro.factor("pull", -PULL * x + torch.log(x + 3.0))


def cliff_mode() -> float:
    # z = x + 3 solves z^2 + (PULL - 3) z - 1 = 0
    b = PULL - 3.0
    return (-b + math.sqrt(b * b + 4.0)) / 2.0 - 3.0


def _plain_lbfgs_fails(problem: Problem) -> bool:
    """The unguarded fit from the prior median (map_start's loop before the guard)."""
    with pyro.get_param_store().scope():
        guide = AutoLaplaceApproximation(problem.model, init_loc_fn=init_to_median)
        guide()
        optim = torch.optim.LBFGS(list(guide.parameters()), lr=1.0, max_iter=500,
                                  line_search_fn="strong_wolfe")

        def closure():
            optim.zero_grad()
            loss = Trace_ELBO().differentiable_loss(problem.model, guide)
            loss.backward()
            return loss

        try:
            optim.step(closure)
        except ValueError:  # the NaN factor, caught by Pyro's validation
            return True
        return not bool(torch.isfinite(guide.loc).all())


def test_map_start_backs_off_where_plain_lbfgs_steps_into_a_nan():
    problem = Problem("cliff", cliff)
    pyro.set_rng_seed(0)
    assert _plain_lbfgs_fails(problem)  # the model exercises the guard
    pyro.set_rng_seed(0)
    point = map_start(problem, Settings(progress=False))
    assert bool(torch.isfinite(point["x"]))
    # the MAP to L-BFGS's tolerance (the mode is 0.0103 from the edge)
    assert abs(float(point["x"]) - cliff_mode()) < 1e-6


def test_map_start_skips_starts_whose_density_is_not_finite():
    def model():  # the prior median x ~ 0 is outside the density's domain x > 0.5
        x = pyro.sample("x", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        pyro.factor("edge", torch.log(x - 0.5))

    problem = Problem("edge", model)
    pyro.set_rng_seed(1)
    point = map_start(problem, Settings(progress=False), num_starts=8)
    # mode of -x^2/2 + log(x - 0.5): x^2 - x/2 - 1 = 0
    assert abs(float(point["x"]) - (0.5 + math.sqrt(0.25 + 4.0)) / 2.0) < 1e-6
    with pytest.raises(ValueError, match="no start reached a finite log density"):
        pyro.set_rng_seed(1)
        map_start(problem, Settings(progress=False), num_starts=1)  # the median only


def test_shared_map_start_fits_once_and_leaves_the_random_stream_alone(monkeypatch):
    problem = Problem("cliff", cliff)
    calls = []
    fit = starts.map_start
    monkeypatch.setattr(starts, "map_start", lambda *a, **k: calls.append(1) or fit(*a, **k))
    pyro.set_rng_seed(3)
    expected = torch.rand(3)
    pyro.set_rng_seed(3)
    first = shared_map_start(problem, Settings(progress=False))
    torch.testing.assert_close(torch.rand(3), expected)  # no draw of the caller consumed
    second = shared_map_start(problem, Settings(progress=False, seed=7))
    assert len(calls) == 1 and first.keys() == second.keys()
    torch.testing.assert_close(second["x"], first["x"], rtol=0, atol=0)
    # another Problem object (even with the same model) is another comparison
    shared_map_start(Problem("cliff", cliff), Settings(progress=False))
    assert len(calls) == 2


def test_shared_map_start_remembers_a_failure(monkeypatch):
    problem = Problem("cliff", cliff)
    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        raise ValueError("map_start: no start reached a finite log density")

    monkeypatch.setattr(starts, "map_start", fail)
    for _ in range(2):
        with pytest.raises(ValueError, match="no start reached"):
            shared_map_start(problem, Settings(progress=False))
    assert len(calls) == 1


def _initial_loc(monkeypatch, problem: Problem) -> tuple[torch.Tensor, str]:
    """fit_fullrank's guide as fit_svi receives it (no step taken)."""
    seen = {}

    def no_steps(problem, guide, settings, **kwargs):
        guide(*problem.args, **problem.kwargs)  # creates the parameters
        seen["loc"] = guide.loc.detach().clone()
        return []

    monkeypatch.setattr(pyro_methods, "fit_svi", no_steps)
    guide, steps = fit_fullrank(problem, Settings(progress=False))
    assert steps == 0
    return seen["loc"], guide.start


def test_fit_fullrank_starts_its_mean_at_the_map(monkeypatch):
    def model():  # two sites, one constrained: the loc is the unconstrained MAP
        x = pyro.sample("x", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        pyro.factor("pull", -PULL * x + torch.log(x + 3.0))
        pyro.sample("s", dist.LogNormal(torch.tensor(1.5, dtype=torch.float64), 0.5))

    problem = Problem("cliff+s", model)
    pyro.set_rng_seed(0)
    point = shared_map_start(problem, Settings(progress=False))
    loc, start = _initial_loc(monkeypatch, problem)
    assert start == "MAP"
    # sites in model order; the mode of log s (Jacobian included) is the normal's mean
    torch.testing.assert_close(loc, torch.stack([point["x"], point["s"].log()]))
    torch.testing.assert_close(loc, torch.tensor([cliff_mode(), 1.5], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_fit_fullrank_falls_back_to_the_prior_median_without_a_map(monkeypatch):
    problem = Problem("cliff", cliff)

    def fail(*args, **kwargs):
        raise ValueError("map_start: no start reached a finite log density")

    monkeypatch.setattr(starts, "map_start", fail)
    loc, start = _initial_loc(monkeypatch, problem)
    assert start.startswith("prior median (no MAP start: ValueError")
    assert abs(float(loc[0])) < 1.0  # the median of 15 standard normal draws, not the MAP


def test_fit_fullrank_does_not_start_at_a_map_with_a_singular_hessian(monkeypatch):
    """y ~ N(a + b, 1) with flat priors: every point with a + b = y is a MAP, and the
    Hessian of -log p there, [[1, 1], [1, 1]], is singular: no centre for a Gaussian."""
    y = torch.tensor(4.0, dtype=torch.float64)
    flat = FlatPrior(dist.constraints.real, like=y)

    def model():
        a = pyro.sample("a", flat)
        b = pyro.sample("b", flat)
        pyro.sample("y", dist.Normal(a + b, 1.0), obs=y)

    problem = Problem("ridge", model)
    pyro.set_rng_seed(0)
    point = shared_map_start(problem, Settings(progress=False))
    assert abs(float(point["a"] + point["b"]) - 4.0) < 1e-4  # a MAP was found
    assert starts.laplace_inverse_mass(problem, point) is None
    loc, start = _initial_loc(monkeypatch, problem)
    assert start == "prior median (the MAP's Hessian is not positive definite)"
    assert not torch.allclose(loc, torch.stack([point["a"], point["b"]]))


def test_fullrank_start_leaves_the_random_stream_alone():
    problem = Problem("cliff", cliff)
    settings = Settings(progress=False)
    pyro.set_rng_seed(0)
    shared_map_start(problem, settings)
    before = torch.rand(())
    pyro.set_rng_seed(0)
    pyro_methods.fullrank_start(problem, settings)  # the MAP is cached; the check traces
    torch.testing.assert_close(torch.rand(()), before)
