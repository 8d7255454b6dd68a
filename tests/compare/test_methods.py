"""Chain starts: the MAP point, jittered per chain, and the Laplace metric at it."""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import init_to_median

from pyro_dgm.compare.methods import init_to_jittered, map_start
from pyro_dgm.compare.methods.starts import laplace_inverse_mass
from pyro_dgm.compare.registry import MODELS, Settings
from pyro_dgm.compare.settings import Problem


def _log_joint(model, values, *args):
    conditioned = poutine.condition(model, data=values)
    return float(poutine.trace(conditioned).get_trace(*args).log_prob_sum())


def test_map_start_climbs_to_a_higher_log_density_than_the_prior_median():
    settings = Settings(num_steps=300, progress=False)
    problem = MODELS.get("fa-synthetic").build(settings)
    start = map_start(problem, settings)
    assert set(start) == {"W_diag", "W_lower", "psi", "loc"}
    assert all(bool(torch.isfinite(v).all()) for v in start.values())
    trace = poutine.trace(problem.model).get_trace(*problem.args)
    median = {name: init_to_median(trace.nodes[name], num_samples=101) for name in start}
    assert (_log_joint(problem.model, start, *problem.args)
            > _log_joint(problem.model, median, *problem.args) + 10)


def test_init_to_jittered_moves_each_chain_in_unconstrained_space():
    def model():
        pyro.sample("s", dist.HalfNormal(torch.ones(3, dtype=torch.float64)).to_event(1))
        pyro.sample("m", dist.Normal(0.0, 1.0))

    values = {"s": torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)}
    strategy = init_to_jittered(values, scale=0.1)
    trace = poutine.trace(model).get_trace()
    draws = torch.stack([strategy(trace.nodes["s"]) for _ in range(2000)])
    assert bool((draws > 0).all())  # stays in the support
    log_ratio = draws.log() - values["s"].log()  # HalfNormal: exp is the bijection
    torch.testing.assert_close(log_ratio.std(0), torch.full((3,), 0.1, dtype=torch.float64),
                               atol=0.01, rtol=0)
    assert float(log_ratio.mean(0).abs().max()) < 0.01
    assert strategy(trace.nodes["m"]).shape == ()  # not in values: the prior median


def test_laplace_inverse_mass_is_exact_for_a_gaussian_in_sorted_flattened_layout():
    # "b" (2-dim Gaussian) and "a" (log-normal: standard normal in log space, Jacobian
    # included): the inverse Hessian of U is the exact covariance, "a" first (sorted)
    cov_b = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    loc_b = torch.tensor([1.0, -1.0], dtype=torch.float64)

    def model():
        pyro.sample("b", dist.MultivariateNormal(loc_b, covariance_matrix=cov_b))
        pyro.sample("a", dist.LogNormal(torch.tensor(0.3, dtype=torch.float64), 0.7))

    problem = Problem("gauss", model)
    # the mode of U in u = log a is the normal's mean 0.3 (the Jacobian cancels the 1/a)
    point = {"b": loc_b, "a": torch.tensor(0.3, dtype=torch.float64).exp()}
    metric = laplace_inverse_mass(problem, point)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, 0] = 0.49
    expected[1:, 1:] = cov_b
    torch.testing.assert_close(metric, expected)


def test_laplace_inverse_mass_is_none_where_the_hessian_is_not_positive_definite():
    def model():  # at the point 2.0, -log density has curvature -1 (a density dip)
        x = pyro.sample("x", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        pyro.factor("dip", x * x)

    problem = Problem("dip", model)
    assert laplace_inverse_mass(problem, {"x": torch.tensor(2.0, dtype=torch.float64)}) is None
