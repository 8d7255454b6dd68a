"""Vectorized chains are checked by value, not only by shape (issue 16, case 3).

A model can keep every shape under the chain plate and still mix the chains: ``beta``
flattened and reshaped back in another order, a sum or mean over the batch dimension, the
first element broadcast to all chains. Vectorized chains of such a model would sample a
wrong posterior; :class:`~pyro_dgm.inference.ChainModel` now compares the batched log
density with each chain's own and raises ``NotVectorizable``, which ``MCMC`` turns into a
fallback to sequential chains with a warning naming the reason.

The property test (hypothesis) defines "never a silent wrong posterior" precisely: a run
either

- warns ``falling back`` (and the draws come from sequential chains), and then the model
  does mix chains, or
- does not warn, and then at every draw the run visited the log joint density of all chains
  evaluated as one batch (a chain plate written out here, independently of ``ChainModel``)
  equals, chain by chain, the density Pyro's sequential chains use (a plain trace of one
  chain's values): the vectorized MH chains target exactly the per-chain posterior.

"The model mixes chains" is decided by the same two evaluations at random distinct points
drawn by hypothesis, so both directions are checked: no silent mixing, no needless fallback.
"""

import unittest.mock
import warnings

import pyro
import pyro.distributions as dist
import pyro.infer.mcmc.api as pyro_api
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mcmc_checks import single_thread
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_dgm.inference import MCMC, ChainModel, Gibbs, NotVectorizable, RandomWalkMH

pytestmark = [pytest.mark.usefixtures(single_thread.__name__),
              pytest.mark.filterwarnings("ignore:num_chains=.* is more than available_cpu")]

D, N = 3, 20


def _mix(kind, v, event):
    """Shape-preserving ways to mix the leading (chain) dimension of ``v``; each is the
    identity on one chain's value (no batch dimension)."""
    flat = v.reshape(-1, event)
    if kind == "flatten":  # flatten, reshape back in the transposed order
        return v.flatten().reshape(event, -1).T.reshape(v.shape)
    if kind == "sum":
        return flat.sum(0, keepdim=True).expand_as(flat).reshape(v.shape)
    if kind == "mean":
        return flat.mean(0, keepdim=True).expand_as(flat).reshape(v.shape)
    if kind == "first":
        return flat[:1].expand_as(flat).reshape(v.shape)
    return v  # "none": the control, a model that broadcasts


def regression(kind="none", site="beta"):
    """The README's regression model with one site mixed across chains."""

    def model(x, y):
        beta = pyro.sample("beta", dist.Normal(x.new_zeros(D), 1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
        if site == "beta":
            beta = _mix(kind, beta, D)
        else:
            sigma = _mix(kind, sigma, 1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal((x * beta).sum(-1), sigma), obs=y)

    return model


def _data(dtype, chains=None):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g, dtype=dtype)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype) + 0.3 * torch.randn(N, generator=g,
                                                                             dtype=dtype)
    if chains is not None:  # a data set per chain
        y = y + torch.linspace(-1, 1, chains, dtype=dtype).unsqueeze(-1)
    return x, y


def batched_log_joint(model, args, beta, sigma):
    """Every chain's log joint at ``beta (C, D)``, ``sigma (C,)`` from one run under a chain
    plate (the model's plate nesting is 1, so the chain dim is -2)."""
    C = beta.shape[0]
    data = {"beta": beta.reshape(C, 1, D), "sigma": sigma.reshape(C, 1)}
    with torch.no_grad(), poutine.block(), pyro.plate("_chains", C, dim=-2):
        trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args)
    trace.compute_log_prob()
    return sum(node["log_prob"].reshape(C, -1).sum(-1) for node in trace.nodes.values()
               if node["type"] == "sample" and not site_is_subsample(node))


def alone_log_joint(model, args, beta, sigma):
    """Each chain's log joint from a plain trace of its values (as sequential chains see it)."""
    out = []
    for b, s in zip(beta, sigma, strict=True):
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(poutine.condition(model, data={"beta": b, "sigma": s})
                                  ).get_trace(*args)
        out.append(trace.log_prob_sum())
    return torch.stack(out)


def _run(kernel, args, chains, steps=5):
    mcmc = MCMC(kernel, num_samples=steps, warmup_steps=steps, num_chains=chains,
                chain_method="vectorized", disable_progbar=True)
    with unittest.mock.patch.object(pyro_api.mp, "cpu_count", return_value=1):
        mcmc.run(*args)  # no chain processes if it falls back
    return mcmc


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(kind=st.sampled_from(["none", "flatten", "sum", "mean", "first"]),
       site=st.sampled_from(["beta", "sigma"]), chains=st.integers(2, 5),
       seed=st.integers(0, 2**16))
def test_vectorized_matches_sequential_or_falls_back(kind, site, chains, seed):
    dtype = torch.float64
    model, args = regression(kind, site), _data(dtype)
    g = torch.Generator().manual_seed(seed)  # distinct points: does the model mix chains?
    beta = torch.randn(chains, D, generator=g, dtype=dtype)
    sigma = torch.rand(chains, generator=g, dtype=dtype) + 0.5
    mixes = not torch.allclose(batched_log_joint(model, args, beta, sigma),
                               alone_log_joint(model, args, beta, sigma), rtol=1e-9)

    pyro.set_rng_seed(0)
    with warnings.catch_warnings(record=True) as record:  # a warning is allowed, not required
        warnings.simplefilter("always")
        mcmc = _run(RandomWalkMH(model), args, chains)
    fell_back = [str(w.message) for w in record if "falling back" in str(w.message)]
    draws = mcmc.get_samples(group_by_chain=True)
    assert draws["beta"].shape == (chains, 5, D)
    if fell_back:
        assert mixes, fell_back
        assert "see each other's values" in fell_back[0]
        assert not mcmc.vectorized
        return
    assert not mixes, f"{kind} on {site} mixes the chains but ran vectorized without a warning"
    for t in range(5):  # the target the vectorized chains saw is every chain's own posterior
        b, s = draws["beta"][:, t], draws["sigma"][:, t]
        assert torch.allclose(batched_log_joint(model, args, b, s),
                              alone_log_joint(model, args, b, s), rtol=1e-9)


# -- the cases of the issue, one by one -------------------------------------------------------
@pytest.mark.parametrize("kind", ["flatten", "sum", "mean", "first"])
def test_readme_model_mixing_chains_falls_back_with_the_reason(kind):
    args = _data(torch.float64)
    with pytest.warns(UserWarning, match="see each other's values.*site 'y'.*falling back"):
        mcmc = _run(RandomWalkMH(regression(kind)), args, chains=3)
    assert not mcmc.vectorized
    assert mcmc.get_samples(group_by_chain=True)["beta"].shape == (3, 5, D)


def test_gibbs_mixing_chains_falls_back_with_the_reason():
    args = _data(torch.float64)
    with pytest.warns(UserWarning, match="see each other's values.*falling back"):
        mcmc = _run(Gibbs(regression("mean", "sigma")), args, chains=2, steps=3)
    assert mcmc.get_samples(group_by_chain=True)["sigma"].shape == (2, 3)


def test_broadcasting_model_stays_vectorized(dtype):
    """No needless fallback, in either dtype (the tolerance follows the dtype)."""
    mcmc = _run(RandomWalkMH(regression()), _data(dtype), chains=4)
    assert mcmc.vectorized
    with pytest.raises(NotVectorizable, match="chain 1 in the batched run"):
        ChainModel(regression("first"), _data(dtype), {}, 4)


def test_data_per_chain_is_checked_against_every_chain_at_one_point():
    """A data set per chain: a chain alone has no data of its own, so the reference is the
    batched run with every chain at that chain's point."""
    args = _data(torch.float64, chains=4)
    ChainModel(regression(), args, {}, 4)  # broadcasting model: accepted
    with pytest.raises(NotVectorizable, match="with every chain at this chain's point"):
        ChainModel(regression("sum"), args, {}, 4)


def test_subsampling_plate_is_not_a_mismatch():
    def model(x, y):
        beta = pyro.sample("beta", dist.Normal(x.new_zeros(D), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0], subsample_size=5) as idx:
            pyro.sample("y", dist.Normal((x[idx] * beta).sum(-1), 1.0), obs=y[idx])

    ChainModel(model, _data(torch.float64), {}, 4)


def test_the_check_leaves_the_random_stream_alone():
    """Seeded runs keep their draws: the check draws its points from a generator of its own
    and restores the global random state after each evaluation."""
    args = _data(torch.float64)
    states = []
    for check in (True, False):
        torch.manual_seed(0)
        with unittest.mock.patch.object(ChainModel, "check_values",
                                        ChainModel.check_values if check else lambda self: None):
            ChainModel(regression(), args, {}, 4)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)
