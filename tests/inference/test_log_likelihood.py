"""Importance-sampled log marginal likelihood: accuracy, ESS, global latents, memory, errors."""

import math
import weakref

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pyro_dgm.inference import LogLikelihood, log_marginal_likelihood
from pyro_dgm.models import ExactPosteriorGuide, FactorAnalysis, fa_log_marginal


def fixed_fa(p=5, q=2, n=100, seed=0):
    data = FactorAnalysis(p, q, dtype=torch.float64).simulate(n, seed=seed)
    return FactorAnalysis(p, q, loc=data.loc, W=data.W, psi=data.psi), data


def shifted_guide(fa, shift=0.02, widen=0.05):
    """The exact posterior, its means shifted and its scale widened: a good, inexact guide
    (ESS about 99% of the samples on the FA data below)."""
    guide = ExactPosteriorGuide(fa)
    with torch.no_grad():
        guide.bias.add_(shift)
        guide.scale_tril_unconstrained.diagonal().add_(widen)
    return guide


def test_guide_proposal_within_005_nats_on_100_points():
    fa, d = fixed_fa(n=100)
    exact = fa_log_marginal(d.x, d.loc, d.W, d.psi)
    guide = shifted_guide(fa)
    est = log_marginal_likelihood(fa, guide, d.x, num_samples=5000)
    assert isinstance(est, LogLikelihood)
    assert est.log_likelihood.shape == (100,) and est.ess.shape == (100,)
    assert est.num_samples == 5000
    assert abs(float(est.total - exact.sum())) < 0.05
    assert bool((est.ess > 1).all()) and bool((est.ess <= 5000 * (1 + 1e-9)).all())
    # the exact guide: every weight is p(x), zero variance, full ESS
    pyro.clear_param_store()  # PyroParams of one class share names in the param store
    exact_est = log_marginal_likelihood(fa, ExactPosteriorGuide(fa), d.x, num_samples=200)
    assert torch.allclose(exact_est.log_likelihood, exact, atol=1e-8)
    assert torch.allclose(exact_est.ess, torch.full_like(exact, 200.0), rtol=1e-8)


def test_prior_proposal_density_network_estimator():
    fa, d = fixed_fa(p=3, q=1, n=20)
    exact = fa_log_marginal(d.x, d.loc, d.W, d.psi)
    est = log_marginal_likelihood(fa, None, d.x, num_samples=5000, proposal="prior")
    assert est.log_likelihood.shape == (20,)
    assert abs(float(est.total - exact.sum())) < 0.1
    guided = log_marginal_likelihood(fa, shifted_guide(fa), d.x, num_samples=5000)
    assert float(guided.ess.mean()) > float(est.ess.mean())  # the guide is the better proposal


def test_global_latent_gives_one_whole_data_estimate():
    """Normal-Normal: mu ~ N(0, 1), x_i ~ N(mu, 1); x ~ N(0, I + 11^T) exactly."""
    x = torch.tensor([0.3, -1.2, 0.8, 2.0, 0.1], dtype=torch.float64)
    n = len(x)
    cov = torch.eye(n, dtype=torch.float64) + 1.0
    exact = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64),
                                                   cov).log_prob(x)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    post_var = 1 / (1 + n)
    post_mean = x.sum() * post_var

    def guide(x):
        pyro.sample("mu", dist.Normal(post_mean, math.sqrt(post_var)))

    est = log_marginal_likelihood(model, guide, x, num_samples=300, chunk_size=64)
    assert est.log_likelihood.shape == ()
    assert abs(float(est.log_likelihood - exact)) < 1e-8
    prior = log_marginal_likelihood(model, None, x, num_samples=20000, proposal="prior")
    assert abs(float(prior.log_likelihood - exact)) < 0.05
    with pytest.raises(ValueError, match="subsampled"):
        def sub_model(x):
            mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
            with pyro.plate("data", len(x), subsample_size=2) as idx:
                pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])

        log_marginal_likelihood(sub_model, None, x, num_samples=10, proposal="prior")


def test_sequential_particles_and_chunking_agree():
    fa, d = fixed_fa(n=10)
    guide = shifted_guide(fa)
    a = log_marginal_likelihood(fa, guide, d.x, num_samples=1000, chunk_size=1000)
    b = log_marginal_likelihood(fa, guide, d.x, num_samples=1000, chunk_size=37)
    c = log_marginal_likelihood(fa, guide, d.x, num_samples=40, vectorize_particles=False)
    # per-point sd of the estimates: about 0.004 (1000 samples), 0.02 (40 samples)
    assert torch.allclose(a.log_likelihood, b.log_likelihood, atol=0.03)
    assert torch.allclose(a.log_likelihood, c.log_likelihood, atol=0.1)


class PeakTensorBytes(TorchDispatchMode):
    """Bytes of tensor storage allocated by torch ops and still alive: current and peak.

    Every new storage an op returns is counted until the storage is freed (a weak
    reference's finalizer), like ``tracemalloc`` for tensors."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = set()

    def _free(self, key, nbytes):
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._seen:
                continue
            self._seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_bytes(fn) -> int:
    with PeakTensorBytes() as mode:
        fn()
    return mode.peak


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_num_samples():
    fa, d = fixed_fa(n=100)
    guide = shifted_guide(fa)

    def run(num, chunk):
        return lambda: log_marginal_likelihood(fa, guide, d.x, num_samples=num,
                                               chunk_size=chunk, max_plate_nesting=1)

    small = peak_bytes(run(50, 50))
    large = peak_bytes(run(5000, 50))
    # one chunk's tensors: 50 samples x 100 points x 5 columns x 8 bytes = 200 kB each
    assert large - small < 64 * 1024
    # the measure sees growth when there is some: all 5000 samples in one chunk
    unchunked = peak_bytes(run(5000, 5000))
    assert unchunked > 50 * small


def test_bad_inputs():
    fa, d = fixed_fa(n=5)
    guide = ExactPosteriorGuide(fa)
    with pytest.raises(ValueError, match="num_samples"):
        log_marginal_likelihood(fa, guide, d.x, num_samples=0)
    with pytest.raises(ValueError, match="chunk_size"):
        log_marginal_likelihood(fa, guide, d.x, chunk_size=0)
    with pytest.raises(ValueError, match="proposal"):
        log_marginal_likelihood(fa, guide, d.x, proposal="posterior")
    with pytest.raises(ValueError, match="needs a guide"):
        log_marginal_likelihood(fa, None, d.x)
    with pytest.raises(ValueError, match="max_plate_nesting"):
        log_marginal_likelihood(fa, guide, d.x, max_plate_nesting=-1)
