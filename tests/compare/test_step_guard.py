"""fit_svi's step guard: a step with a non-finite or jumping loss is undone, not accepted."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_dgm.compare import default_settings
from pyro_dgm.compare.methods.fitting import StepGuard, fit_svi
from pyro_dgm.compare.registry import Problem


def _problem(bad_calls=()):
    """z ~ N(1, 0.5²) given one observation; the model's log density is nan on the calls
    numbered in ``bad_calls`` (a stand-in for a step that lands where it overflows)."""
    calls = {"n": 0}

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=torch.tensor(1.0, dtype=torch.float64))
        calls["n"] += 1
        if calls["n"] in bad_calls or "all" in bad_calls and calls["n"] > bad_calls[0]:
            with pyro.validation_enabled(False):  # nan in the value and the gradient
                pyro.factor("overflow", z * math.nan)

    problem = Problem("toy", model, vectorizable=True, max_plate_nesting=0)
    return problem, calls


def _fit(problem, guard, num_steps=60):
    pyro.set_rng_seed(0)
    guide = AutoNormal(problem.model)
    settings = default_settings(num_steps=num_steps, progress=False)
    # compile=False: the stand-in for an overflow is Python state a captured graph never sees
    losses = fit_svi(problem, guide, settings, num_steps=num_steps, lr=0.05, guard=guard,
                     compile=False)
    return guide, losses


def test_a_step_with_a_nan_loss_is_undone_and_retried_smaller():
    # calls: 1 prototype, 2 first loss, then one per step; steps 11 and 12 are nan
    problem, calls = _problem(bad_calls=(13, 14))
    guide, losses = _fit(problem, guard=True)
    assert losses.rejected == 2 and len(losses) == 58
    assert all(math.isfinite(x) for x in losses)
    assert all(bool(torch.isfinite(p).all()) for p in guide.parameters())
    # without the guard the nan gradient poisons the parameters: the next step fails
    problem, _ = _problem(bad_calls=(13, 14))
    with pytest.warns(UserWarning, match="Encountered NaN"), \
            pytest.raises(ValueError, match="(?s)parameter loc .* invalid values"):
        _fit(problem, guard=False)


def test_a_loss_jump_restores_the_last_accepted_parameters_and_halves_the_rate():
    problem, _ = _problem()
    pyro.set_rng_seed(1)
    guide = AutoNormal(problem.model)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0)
    svi = SVI(problem.model, guide, pyro.optim.ClippedAdam({"lr": 0.05}), elbo)
    svi.evaluate_loss()
    guard = StepGuard(svi, window=20)
    store = pyro.get_param_store()
    for _ in range(40):
        before = {k: v.detach().clone() for k, v in store.named_parameters()}
        guard.save()
        assert guard.check(svi.step())
    # a bad update: the guide's sd jumps to 1000 (softplus(1000)), as in a blow-up
    with torch.no_grad():
        dict(store.named_parameters())["AutoNormal.scales.z"].fill_(1000.0)
    guard.save()
    loss = svi.step()
    assert loss > 1e4  # about E[(z - 1)²] / (2 * 0.25) = 2e6 at sd 1000
    assert not guard.check(loss)
    for name, value in store.named_parameters():
        torch.testing.assert_close(value.detach(), before[name], atol=0, rtol=0)
    rates = [g["lr"] for opt in svi.optim.optim_objs.values() for g in opt.param_groups]
    assert rates == pytest.approx([0.025] * len(rates))
    assert guard.rejected == 1
    guard.save()
    assert guard.check(svi.step())  # and it goes on from there


def test_a_loss_that_stays_non_finite_is_an_arithmetic_error_naming_the_loss():
    problem, _ = _problem(bad_calls=(1, 2))  # nan from the first loss
    with pytest.raises(FloatingPointError, match="loss: not finite at the guide's initial"):
        _fit(problem, guard=True)
    assert issubclass(FloatingPointError, ArithmeticError)  # the runner reports it, goes on
    problem, _ = _problem(bad_calls=(5, "all"))
    with pytest.raises(FloatingPointError, match="loss: 21 SVI steps in a row rejected"):
        _fit(problem, guard=True)
