"""VectorizedKernel.compile_potential: the compiled batched potential (and its gradient)
equals the ordinary one, chains run identically with it, and data-dependent control flow
falls back with one warning."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_dgm.inference import MCMC, ChEESHMC, CompileFallbackWarning, RandomWalkMH
from pyro_dgm.inference.compiled_potential import CompiledPotential

F64 = torch.float64


def logistic(x, y):
    beta = pyro.sample("beta", dist.Normal(torch.zeros(x.shape[-1], dtype=x.dtype),
                                           1.0).to_event(1))
    scale = pyro.sample("scale", dist.HalfNormal(torch.ones((), dtype=x.dtype)))
    with pyro.plate("data", x.shape[0]):
        logits = (x * beta).sum(-1) * scale
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def _data(n=30, d=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=F64)
    return x, (torch.rand(n, generator=g, dtype=F64) < 0.5).to(F64)


def _run(kernel_type, compiled):
    pyro.set_rng_seed(1)
    kernel = kernel_type(logistic)
    kernel.compile_potential = compiled
    mcmc = MCMC(kernel, num_samples=30, warmup_steps=30, num_chains=8,
                chain_method="vectorized", disable_progbar=True)
    mcmc.run(*_data())
    return kernel, mcmc.get_samples(group_by_chain=True)


@pytest.mark.parametrize("kernel_type", [RandomWalkMH, ChEESHMC])
def test_chains_equal_with_compiled_potential(kernel_type):
    _, ordinary = _run(kernel_type, False)
    kernel, compiled = _run(kernel_type, True)
    assert isinstance(kernel._potential, CompiledPotential)
    assert kernel._potential.fallback is None and kernel._potential.compile_seconds > 0
    for name in ordinary:
        assert torch.allclose(ordinary[name], compiled[name], atol=1e-6, rtol=0), name


def test_value_and_gradient_equal():
    x, y = _data()
    kernel = ChEESHMC(logistic)
    kernel.setup_chains(5, 10, (x, y))
    plain = kernel._potential
    compiled = CompiledPotential(plain)
    g = torch.Generator().manual_seed(3)
    params = {"beta": torch.randn(5, 3, generator=g, dtype=F64),
              "scale": torch.randn(5, generator=g, dtype=F64)}
    weights = torch.rand(5, generator=g, dtype=F64)
    out = []
    for fn in (plain, compiled):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        energy = fn(leaves)
        grads = torch.autograd.grad((energy * weights).sum(), list(leaves.values()))
        out.append((energy.detach(), grads))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-10, rtol=0)
    for a, b in zip(out[0][1], out[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    with torch.no_grad():
        assert torch.allclose(compiled(params), plain(params), atol=1e-10, rtol=0)


def test_data_dependent_potential_falls_back():
    def branching(params):
        beta = params["beta"]
        return beta.pow(2).sum(-1) * (2.0 if bool(beta.sum() > 0) else 1.0)

    compiled = CompiledPotential(branching)
    params = {"beta": torch.ones(4, 2, dtype=F64)}
    with pytest.warns(CompileFallbackWarning, match="data-dependent"):
        assert torch.equal(compiled(params), branching(params))
    assert compiled.fallback is not None
    assert torch.equal(compiled({"beta": -params["beta"]}), branching({"beta": -params["beta"]}))
