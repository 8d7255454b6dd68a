"""The NUTS reference's chain start: the MAP point, jittered per chain."""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import init_to_median

from pyro_dgm.compare.methods import init_to_jittered, map_start
from pyro_dgm.compare.registry import MODELS, Settings


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
