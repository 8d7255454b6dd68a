"""Pathfinder: the L-BFGS Gaussian factors, PSIS, the guide's accuracy on Gaussians, log q,
argument checks and the MCMC start."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, Predictive

from pyro_dgm.inference import Pathfinder, init_to_pathfinder, psis_smooth
from pyro_dgm.inference.lbfgs_gaussian import (
    LBFGSNormal,
    LBFGSPath,
    curvature_history,
    gaussian_at,
    lbfgs_path,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_target(dim, cond=100.0, dtype=torch.float64, device="cpu", seed=0):
    """Mean and dense covariance with eigenvalues log-spaced in [1, cond]."""
    gen = torch.Generator().manual_seed(seed)
    rot, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(cond), dim, dtype=torch.float64)
    cov = rot @ torch.diag(eig) @ rot.T
    mean = torch.randn(dim, generator=gen, dtype=torch.float64)
    return mean.to(dtype=dtype, device=device), cov.to(dtype=dtype, device=device)


def gaussian_model(mean, cov):
    def model():
        pyro.sample("x", dist.MultivariateNormal(mean, cov))
    return model


def dense_cov(q: LBFGSNormal) -> torch.Tensor:
    eye_k = torch.eye(q.L.shape[-1], dtype=q.L.dtype, device=q.L.device)
    eye_d = torch.eye(q.loc.shape[-1], dtype=q.L.dtype, device=q.L.device)
    inner = eye_d + q.Q @ (q.L @ q.L.T - eye_k) @ q.Q.T
    return q.scale[:, None] * inner * q.scale


def test_factors_equal_recursive_bfgs():
    """diag(alpha) + beta gamma beta^T is the BFGS update of diag(alpha) by the pairs."""
    gen = torch.Generator().manual_seed(1)
    d, m = 8, 5
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    a = a @ a.T + d * torch.eye(d, dtype=torch.float64)
    S = torch.randn(d, m, generator=gen, dtype=torch.float64)
    Y = a @ S
    alpha = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5
    H = torch.diag(alpha)
    eye = torch.eye(d, dtype=torch.float64)
    for j in range(m):
        s, y = S[:, j], Y[:, j]
        rho = 1 / s.dot(y)
        H = (eye - rho * torch.outer(s, y)) @ H @ (eye - rho * torch.outer(y, s)) \
            + rho * torch.outer(s, s)
    x, g = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen,
                                                                           dtype=torch.float64)
    q = gaussian_at(x, g, alpha, S, Y)
    torch.testing.assert_close(dense_cov(q), H, atol=1e-12, rtol=0)
    torch.testing.assert_close(q.loc, x - H @ g, atol=1e-12, rtol=0)
    # the draw's density is the dense Gaussian's
    v = q.sample((7,))
    ref = torch.distributions.MultivariateNormal(q.loc, H).log_prob(v)
    torch.testing.assert_close(q.log_prob(v), ref, atol=1e-10, rtol=0)


def _dense_bfgs_by_hand(alpha0, pairs, history_size):
    """The reference for :func:`curvature_history` + :func:`gaussian_at`, written from the
    textbook forms with dense matrices: the diagonal as the diagonal of the BFGS *Hessian*
    update of diag(1/alpha) scaled by y'diag(alpha)y / y's (Gilbert & Lemarechal 1989, as
    the paper's Algorithm 3 states it), pairs failing s'y > eps |y|^2 skipped, and the
    inverse Hessian as the BFGS inverse update of diag(alpha) by the last ``history_size``
    accepted pairs in order."""
    eps = torch.finfo(torch.float64).eps
    alpha, accepted, out = alpha0.clone(), [], []
    for s, y in pairs:
        if float(s @ y) > eps * float(y @ y):
            B = torch.diag(1 / alpha) * float(y @ (alpha * y)) / float(y @ s)
            Bs = B @ s
            B = B - torch.outer(Bs, Bs) / float(s @ Bs) + torch.outer(y, y) / float(y @ s)
            alpha = 1 / B.diagonal()
            accepted = (accepted + [(s, y)])[-history_size:]
        H = torch.diag(alpha)
        eye = torch.eye(alpha.shape[0], dtype=torch.float64)
        for s_, y_ in accepted:
            rho = 1 / float(s_ @ y_)
            H = (eye - rho * torch.outer(s_, y_)) @ H @ (eye - rho * torch.outer(y_, s_)) \
                + rho * torch.outer(s_, s_)
        out.append(H)
    return out


def test_path_gaussians_equal_dense_bfgs_by_hand():
    """Exact check of the whole chain (curvature check, diagonal update, history window,
    compact factors, mean, log-determinant, density) on a quadratic target with given
    iterates: two steps along which the gradient does not grow (s'y <= 0) must be skipped."""
    gen = torch.Generator().manual_seed(5)
    d, m = 7, 3
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    A = a @ a.T + torch.eye(d, dtype=torch.float64)  # the target's precision
    xs = [torch.randn(d, generator=gen, dtype=torch.float64)]
    grads = [A @ xs[0]]
    for j in range(8):
        step = 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
        xs.append(xs[-1] + step)
        grads.append(A @ xs[-1])
        if j in (2, 5):  # a gradient that fails the curvature check (as from a non-quadratic)
            grads[-1] = grads[-2] - 0.5 * step
    path = LBFGSPath(torch.stack(xs), torch.zeros(len(xs), dtype=torch.float64),
                     torch.stack(grads), 0)
    pairs = list(zip(path.x.diff(dim=0), path.grad.diff(dim=0), strict=True))
    assert sum(float(s @ y) <= 0 for s, y in pairs) == 2
    expected = _dense_bfgs_by_hand(torch.ones(d, dtype=torch.float64), pairs, m)
    for step, ((alpha, S, Y), H) in enumerate(zip(curvature_history(path, m), expected,
                                                    strict=True), start=1):
        assert S.shape[1] == min(m, sum(float(s @ y) > 0 for s, y in pairs[:step]))
        q = gaussian_at(path.x[step], path.grad[step], alpha, S, Y)
        torch.testing.assert_close(dense_cov(q), H, atol=1e-10, rtol=0)
        torch.testing.assert_close(q.loc, path.x[step] - H @ path.grad[step], atol=1e-10,
                                   rtol=0)
        torch.testing.assert_close(q.variance, H.diagonal(), atol=1e-10, rtol=0)
        # density (hence the log-determinant) of the factored form = the dense Gaussian's
        v = torch.cat([q.sample((3,)), q.loc[None]])
        ref = torch.distributions.MultivariateNormal(q.loc, H).log_prob(v)
        torch.testing.assert_close(q.log_prob(v), ref, atol=1e-10, rtol=0)
        logdet = -2 * q.log_prob(q.loc) - d * math.log(2 * math.pi)
        torch.testing.assert_close(logdet, torch.logdet(H), atol=1e-10, rtol=0)


def test_exact_with_conjugate_full_history():
    """With D conjugate updates (eigenvectors) the Gaussian is the target, whatever alpha."""
    mean, cov = gaussian_target(6)
    prec = torch.linalg.inv(cov)
    _, vecs = torch.linalg.eigh(prec)
    x = torch.randn(6, dtype=torch.float64)
    q = gaussian_at(x, prec @ (x - mean), torch.rand(6, dtype=torch.float64) + 0.1, vecs,
                    prec @ vecs)
    torch.testing.assert_close(q.loc, mean, atol=1e-10, rtol=0)
    torch.testing.assert_close(dense_cov(q), cov, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dim", [3, 8])
def test_lbfgs_gaussian_exact_after_dim_iterations(dim):
    """On a Gaussian, an exact line search (cubic interpolation is exact on a quadratic)
    gives conjugate updates; with history >= D the D-th iterate's Gaussian is the target."""
    mean, cov = gaussian_target(dim, seed=dim)
    prec = torch.linalg.inv(cov)
    gen = torch.Generator().manual_seed(dim)
    x0 = 4 * torch.rand(dim, generator=gen, dtype=torch.float64) - 2
    path = lbfgs_path(lambda x: 0.5 * (x - mean) @ prec @ (x - mean), x0, history_size=dim,
                      wolfe_c2=0.01, rel_tol=1e-14)
    alpha, S, Y = curvature_history(path, dim)[dim - 1]
    q = gaussian_at(path.x[dim], path.grad[dim], alpha, S, Y)
    torch.testing.assert_close(q.loc, mean, atol=1e-10, rtol=0)
    torch.testing.assert_close(dense_cov(q), cov, atol=1e-10 * cov.abs().max(), rtol=0)


def test_pathfinder_recovers_gaussian_with_full_history():
    """End to end (the ELBO, a 25-draw estimate, picks among near-exact iterates)."""
    mean, cov = gaussian_target(5)
    guide = Pathfinder(gaussian_model(mean, cov), num_paths=1, history_size=5,
                       wolfe_c2=0.01)
    guide.fit()
    q = guide.get_posterior()
    sd = cov.diagonal().sqrt()
    assert ((q.loc - mean).abs() / sd).max() < 1e-2
    torch.testing.assert_close(dense_cov(q), cov, atol=0.02 * cov.diagonal().max(), rtol=0)


def test_lbfgs_path_minimizes_and_counts():
    calls = []

    def fn(x):
        calls.append(1)
        return ((x - 3.0) ** 2 * torch.arange(1, 4, dtype=x.dtype)).sum()

    path = lbfgs_path(fn, torch.zeros(3, dtype=torch.float64), history_size=3)
    torch.testing.assert_close(path.x[-1], torch.full((3,), 3.0, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert path.num_evals == len(calls)
    assert path.x.shape[0] == path.grad.shape[0] == path.f.shape[0]


@pytest.mark.parametrize("dim", [10])
def test_gaussian_accuracy(dim, dtype):
    """Means within 0.1 sd and sds within 10 % on a condition-number-100 dense Gaussian."""
    mean, cov = gaussian_target(dim, dtype=dtype)
    pyro.set_rng_seed(1)
    guide = Pathfinder(gaussian_model(mean, cov), history_size=dim, wolfe_c2=0.01)
    guide.fit()
    draws = Predictive(gaussian_model(mean, cov), guide=guide, num_samples=4000,
                       parallel=True)()["x"].reshape(4000, dim)
    sd = cov.diagonal().sqrt()
    assert ((draws.mean(0) - mean).abs() / sd).max() < 0.1
    assert ((draws.std(0) / sd) - 1).abs().max() < 0.1
    assert 0 < guide.num_grad_evals < 500
    assert guide.num_logp_evals > 0


def constrained_model(data):
    loc = pyro.sample("loc", dist.Normal(data.new_zeros(()), 10.0))
    scale = pyro.sample("scale", dist.LogNormal(data.new_zeros(()), 1.0))
    with pyro.plate("n", data.shape[0]):
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)


@pytest.mark.parametrize("num_paths", [1, 3])
def test_log_q_is_the_guides_density(num_paths):
    data = torch.randn(15, dtype=torch.float64) + 1.0
    guide = Pathfinder(constrained_model, num_paths=num_paths, num_draws=200).fit(data)
    for _ in range(3):
        trace = poutine.trace(guide).get_trace(data)
        trace.compute_log_prob()
        log_q = sum(site["log_prob"].sum() for site in trace.nodes.values()
                    if site["type"] == "sample")
        latent = trace.nodes["_Pathfinder_latent"]["value"]
        scale = trace.nodes["scale"]["value"]
        # log q(u) of the packed latent minus log|dx/du| of exp for the scale
        expected = guide.get_posterior().log_prob(latent) - torch.log(scale)
        torch.testing.assert_close(log_q, expected, atol=1e-10, rtol=0)
    assert math.isfinite(guide.khat)
    assert guide.path_weights.shape == (num_paths,)
    torch.testing.assert_close(guide.path_weights.sum(), data.new_ones(()))
    assert guide.draws["scale"].shape == (200,) and bool((guide.draws["scale"] > 0).all())


def test_works_in_dtype_and_device(dtype, device):
    data = (torch.randn(15, dtype=torch.float64) + 1.0).to(dtype=dtype, device=device)
    guide = Pathfinder(constrained_model, num_paths=2, num_draws=100).fit(data)
    q = guide.get_posterior()
    assert q.mean.dtype == dtype and q.mean.device.type == device.type
    samples = Predictive(constrained_model, guide=guide, num_samples=50)(data)
    assert samples["loc"].dtype == dtype and samples["loc"].device.type == device.type
    assert abs(float(samples["loc"].mean()) - float(data.mean())) < 0.5


@pytest.mark.parametrize("kwargs", [
    {"num_paths": 0}, {"history_size": 0}, {"num_draws": "many"}, {"num_elbo_draws": 0},
    {"max_iters": 0}, {"init_scale": -1.0}, {"init_scale": math.inf}, {"wolfe_c2": 1.5},
    {"wolfe_c2": 1e-5}, {"rel_tol": 0.0},
])
def test_bad_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        Pathfinder(constrained_model, **kwargs)


def test_guide_before_fit_raises():
    guide = Pathfinder(constrained_model)
    with pytest.raises(RuntimeError, match="fit"):
        guide(torch.randn(5))


def test_init_to_pathfinder_with_nuts():
    data = torch.randn(20) + 2.0
    strategy = init_to_pathfinder(constrained_model, data,
                                  pathfinder_options={"num_paths": 2, "num_draws": 100})
    kernel = NUTS(constrained_model, init_strategy=strategy)
    mcmc = MCMC(kernel, num_samples=30, warmup_steps=30, disable_progbar=True)
    mcmc.run(data)
    samples = mcmc.get_samples()
    assert abs(float(samples["loc"].mean()) - float(data.mean())) < 0.5
    # every round over the sites is a fresh joint draw; batched sites get one per chain
    site = {"name": "loc", "fn": dist.Normal(torch.zeros(()), 1.0)}
    first, second = strategy(site), strategy(site)
    assert first.shape == () and not torch.equal(first, second)
    batched = {"name": "scale", "fn": dist.LogNormal(torch.zeros(4, 1), 1.0)}
    assert strategy(batched).shape == (4, 1)
    unknown = {"name": "other", "fn": dist.Normal(torch.zeros(2), 1.0)}
    assert strategy(unknown).shape == (2,)


def test_psis_smooth_matches_arviz():
    az = pytest.importorskip("arviz")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2000, generator=gen, dtype=torch.float64)
    log_ratios = dist.StudentT(3.0).log_prob(x) - dist.Normal(0.0, 1.0).log_prob(x)
    log_w, khat = psis_smooth(log_ratios)
    ref_w, ref_k = az.psislw(log_ratios.numpy())
    assert abs(float(khat) - float(ref_k)) < 1e-10
    torch.testing.assert_close(log_w, torch.as_tensor(ref_w), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="log_ratios"):
        psis_smooth(torch.full((5,), -math.inf))
