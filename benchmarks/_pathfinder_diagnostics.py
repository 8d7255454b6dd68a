"""Why Pathfinder's sds fall short on a dense 100-D Gaussian: the measurements behind
docs/pathfinder.md ("Why D = 100 fails"), run by ``python -m benchmarks.pathfinder`` (full).

- ``kl_optimal_sd_err``: the diag + rank-r Gaussian closest to the target in KL(q || p) (what
  Pathfinder's ELBO ranks by), by L-BFGS on the exact KL: the best any history-J iterate
  (r = 2J) could be by the ELBO's own measure;
- ``diagonal_vs_variances``: the Gilbert-Lemarechal diagonal along a default path against the
  conditional (1/P_ii) and marginal (Sigma_ii) variances;
- ``full_history_paths``: history = D with a near-exact line search, stopped by Pathfinder's
  relative tolerance or run to the float64 floor of the objective: iterations, and the
  iterate closest to the target in exact KL (an oracle choice, better than the ELBO's);
- ``gradient_floor_path``: the same with a gradient-only exact line search (one secant step
  on the directional derivative: exact on a quadratic), run past the float64 floor of the
  gradient.
"""

from __future__ import annotations

import torch

from pyro_dgm.inference.lbfgs_gaussian import (
    LBFGSPath,
    _direction,
    curvature_history,
    gaussian_at,
    lbfgs_path,
)

__all__ = ["diagnostics", "kl_optimal_sd_err"]


def _sd_err(sd, cov) -> float:
    return float((sd / cov.diagonal().sqrt() - 1).abs().max())


def kl_optimal_sd_err(mean, cov, rank: int) -> dict:
    dim = mean.shape[0]
    prec = torch.linalg.inv(cov)
    gen = torch.Generator(device="cpu").manual_seed(0)
    log_d = torch.zeros(dim, dtype=cov.dtype, device=cov.device, requires_grad=True)
    factor = (0.1 * torch.randn(dim, rank, generator=gen, dtype=cov.dtype)).to(cov.device)
    factor.requires_grad_(True)
    opt = torch.optim.LBFGS([log_d, factor], max_iter=2000, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=50,
                            line_search_fn="strong_wolfe")

    def kl():
        c = prec @ (torch.diag(log_d.exp()) + factor @ factor.T)
        return 0.5 * (torch.trace(c) - dim - torch.logdet(c))

    def closure():
        opt.zero_grad()
        value = kl()
        value.backward()
        return value

    for _ in range(5):
        opt.step(closure)
    with torch.no_grad():
        sd = (log_d.exp() + (factor ** 2).sum(-1)).sqrt()
        return {"rank": rank, "kl": float(kl()), "sd_err": _sd_err(sd, cov),
                "min_sd_ratio": float((sd / cov.diagonal().sqrt()).min())}


def _gaussians(path: LBFGSPath, history: int, mean, cov) -> list[dict]:
    """Exact KL(q_l || p) and sd error of every iterate's Gaussian."""
    prec, logdet = torch.linalg.inv(cov), torch.logdet(cov)
    dim = mean.shape[0]
    out = []
    for step, (alpha, S, Y) in enumerate(curvature_history(path, history), start=1):
        q = gaussian_at(path.x[step], path.grad[step], alpha, S, Y)
        if q is None:
            continue
        eye_k = torch.eye(q.L.shape[-1], dtype=cov.dtype, device=cov.device)
        inner = torch.eye(dim, dtype=cov.dtype, device=cov.device) \
            + q.Q @ (q.L @ q.L.T - eye_k) @ q.Q.T
        cq = q.scale[:, None] * inner * q.scale
        d = q.loc - mean
        kl = 0.5 * (torch.trace(prec @ cq) - dim + d @ prec @ d + logdet - torch.logdet(cq))
        out.append({"iteration": step, "kl": float(kl), "sd_err": _sd_err(q.variance.sqrt(), cov),
                    "alpha_median": float(alpha.median())})
    return out


def _secant_path(fn, x0, history: int, iters: int) -> LBFGSPath:
    """L-BFGS whose line search is one secant step on the directional derivative."""
    def value_and_grad(x):
        x = x.detach().requires_grad_(True)
        value = fn(x)
        (grad,) = torch.autograd.grad(value, x)
        return float(value.detach()), grad

    x = x0
    f, g = value_and_grad(x)
    xs, fs, gs, pairs, evals = [x], [f], [g], [], 1
    for _ in range(iters):
        d = _direction(g, pairs)
        if not pairs:
            d = d / g.abs().sum()
        slope0 = g.dot(d)
        slope1 = value_and_grad(x + d)[1].dot(d)
        t = slope0 / (slope0 - slope1)
        f, g_new = value_and_grad(x + t * d)
        evals += 2
        s, y = t * d, g_new - g
        if bool(s.dot(y) > torch.finfo(x.dtype).eps * y.dot(y)):
            pairs = (pairs + [(s, y)])[-history:]
        x, g = x + s, g_new
        xs.append(x)
        fs.append(f)
        gs.append(g)
    return LBFGSPath(torch.stack(xs), torch.tensor(fs, dtype=x0.dtype), torch.stack(gs), evals)


def diagnostics(mean, cov, seed: int) -> dict:
    dim = mean.shape[0]
    target = torch.distributions.MultivariateNormal(mean, cov)

    def fn(x):
        return -target.log_prob(x)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    x0 = (4 * torch.rand(dim, generator=gen, dtype=mean.dtype) - 2).to(mean.device)
    f_star = float(fn(mean))
    out = {"conditional_variance_median": float((1 / torch.linalg.inv(cov).diagonal()).median()),
           "marginal_variance_median": float(cov.diagonal().median())}
    default = _gaussians(lbfgs_path(fn, x0, history_size=6), 6, mean, cov)
    out["default_path_alpha_median"] = [min(r["alpha_median"] for r in default),
                                        max(r["alpha_median"] for r in default)]
    out["full_history_paths"] = {}
    for name, rel_tol in (("pathfinder_tolerance", 1e4 * torch.finfo(mean.dtype).eps),
                          ("tolerance_0", 1e-300)):
        path = lbfgs_path(fn, x0, history_size=dim, wolfe_c2=0.01, rel_tol=rel_tol,
                          grad_tol=0.0)
        rows = _gaussians(path, dim, mean, cov)
        best = min(rows, key=lambda r: r["kl"])
        out["full_history_paths"][name] = {
            "iterations": path.x.shape[0] - 1, "grad_evals": path.num_evals,
            "final_f_minus_min": float(path.f[-1]) - f_star, "best_by_exact_kl": best}
    grad_floor = {}
    for iters in (dim // 2, (4 * dim) // 5, (13 * dim) // 10):
        path = _secant_path(fn, x0, dim, iters)
        last = _gaussians(path, dim, mean, cov)[-1]
        grad_floor[str(iters)] = {**last, "grad_evals": path.num_evals,
                                  "grad_max": float(path.grad[-1].abs().max())}
    out["gradient_floor_path"] = grad_floor
    return out
