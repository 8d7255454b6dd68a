r"""L-BFGS paths and the Gaussians Pathfinder builds along them.

Pathfinder (Zhang, Carpenter, Gelman & Vehtari 2022, JMLR 23(306), Algorithms 1-4) runs
L-BFGS on :math:`f(\theta) = -\log p(\theta)` and, at every iterate :math:`\theta_l`, forms
the Gaussian

.. math::

    q_l = \mathcal N\bigl(\theta_l - \Sigma_l \nabla f(\theta_l),\ \Sigma_l\bigr),\qquad
    \Sigma_l = \operatorname{diag}(\alpha_l) + \beta_l \gamma_l \beta_l^\top,

the L-BFGS inverse Hessian in compact form (Byrd, Nocedal & Schnabel 1994) from the last
:math:`m` accepted updates :math:`s = \theta_{j+1} - \theta_j`,
:math:`y = \nabla f(\theta_{j+1}) - \nabla f(\theta_j)` (columns of :math:`S, Y`):

.. math::

    \beta = [\operatorname{diag}(\alpha) Y,\ S], \quad
    \gamma = \begin{pmatrix} 0 & -R^{-1} \\ -R^{-\top} &
        R^{-\top}(E + Y^\top \operatorname{diag}(\alpha) Y) R^{-1}\end{pmatrix},

with :math:`R` the upper triangle of :math:`S^\top Y` and :math:`E` its diagonal. An update
is accepted only if :math:`s^\top y > \epsilon \lVert y\rVert^2` (the paper's curvature
check, :math:`\epsilon` the dtype's machine epsilon); each accepted update also moves the
diagonal :math:`\alpha` by the inverse-Hessian diagonal update of Gilbert & Lemaréchal
(1989) (the paper's Algorithm 3):

.. math::

    \frac{1}{\alpha_{new}} = \frac{a}{b\,\alpha} + \frac{y^2}{b}
        - \frac{a\, s^2}{b\, c\, \alpha^2},\quad
    a = y^\top \operatorname{diag}(\alpha)\, y,\ b = y^\top s,\
    c = s^\top \operatorname{diag}(\alpha)^{-1} s.

:class:`LBFGSNormal` holds :math:`q_l` in the factored form of the paper's Algorithm 4:
with the thin QR :math:`\operatorname{diag}(\alpha)^{-1/2}\beta = QR` and
:math:`LL^\top = I + R\gamma R^\top`,
:math:`\Sigma = \operatorname{diag}(\alpha)^{1/2}(I + Q(LL^\top - I)Q^\top)
\operatorname{diag}(\alpha)^{1/2}`, so a draw and its log density cost
:math:`O(D m)` rather than :math:`O(D^3)`.

Example::

    >>> path = lbfgs_path(lambda x: 0.5 * (x ** 2).sum(), torch.ones(3), history_size=5)
    >>> q = gaussian_at(path.x[-1], path.grad[-1], *curvature_history(path, 5)[-1])
    >>> q.sample((10,)).shape
    torch.Size([10, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.optim.lbfgs import _strong_wolfe

__all__ = ["LBFGSNormal", "LBFGSPath", "curvature_history", "gaussian_at", "lbfgs_path"]


@dataclass
class LBFGSPath:
    """An L-BFGS trajectory: iterates ``x`` (``(L + 1, D)``, the start first), the objective
    ``f`` (``(L + 1,)``) and its gradient ``grad`` there, and ``num_evals``, the number of
    objective-and-gradient evaluations it took (line searches included)."""

    x: torch.Tensor
    f: torch.Tensor
    grad: torch.Tensor
    num_evals: int


def _direction(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``-H g`` by the two-loop recursion, ``H_0 = (s^T y / y^T y) I`` of the last pair."""
    q = -g
    alphas = []
    for s, y in reversed(pairs):
        a = s.dot(q) / s.dot(y)
        q = q - a * y
        alphas.append(a)
    if pairs:
        s, y = pairs[-1]
        q = q * (s.dot(y) / y.dot(y))
    for (s, y), a in zip(pairs, reversed(alphas), strict=True):
        q = q + (a - y.dot(q) / s.dot(y)) * s
    return q


def lbfgs_path(fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *,
               history_size: int = 6, max_iters: int = 1000, rel_tol: float = 1e-10,
               grad_tol: float = 1e-8, max_line_search: int = 25,
               wolfe_c2: float = 0.9) -> LBFGSPath:
    r"""Minimize ``fn`` from ``x0`` by L-BFGS with a strong-Wolfe line search and record the
    path. Stops after ``max_iters`` iterations, when the relative decrease
    :math:`|f_l - f_{l+1}| / \max(|f_l|, |f_{l+1}|, 1)` falls below ``rel_tol``, when
    :math:`\lVert\nabla f\rVert_\infty` falls below ``grad_tol``, or when the line search
    makes no progress.

    :param wolfe_c2: the curvature constant of the strong Wolfe conditions (``c1 = 1e-4``):
        0.9 is the usual inexact search; near 0 the search is near exact, the updates near
        conjugate, and on a Gaussian with ``history_size >= D`` the inverse Hessian of the
        last iterates near exact (BFGS's hereditary property).
    :param fn: the objective of a 1-D tensor (differentiable by autograd).
    :raises ValueError: if ``fn(x0)`` or its gradient is not finite.
    """
    num_evals = 0

    def value_and_grad(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        nonlocal num_evals
        num_evals += 1
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = fn(x)
            (grad,) = torch.autograd.grad(value, x)
        return float(value.detach()), grad.detach()

    x = x0.detach().clone()
    f, g = value_and_grad(x)
    if not (math.isfinite(f) and bool(torch.isfinite(g).all())):
        raise ValueError(f"x0: the objective or its gradient is not finite there (f = {f})")
    xs, fs, gs = [x], [f], [g]
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    eps = torch.finfo(x.dtype).eps
    for it in range(max_iters):
        d = _direction(g, pairs)
        gtd = g.dot(d)
        if not bool(gtd < 0):  # not a descent direction: restart from steepest descent
            pairs.clear()
            d, gtd = -g, -g.dot(g)
        t = min(1.0, 1.0 / float(g.abs().sum())) if it == 0 else 1.0
        f_new, g_new, t, _ = _strong_wolfe(lambda x_, t_, d_: value_and_grad(x_ + t_ * d_),
                                           x, t, d, f, g, gtd, c2=wolfe_c2, max_ls=max_line_search)
        x_new = x + t * d
        if not (math.isfinite(f_new) and bool(torch.isfinite(g_new).all())) or f_new > f:
            break
        s, y = x_new - x, g_new - g
        if bool(s.dot(y) > eps * y.dot(y)):
            pairs = (pairs + [(s, y)])[-history_size:]
        xs.append(x_new)
        fs.append(f_new)
        gs.append(g_new)
        converged = (abs(f - f_new) / max(abs(f), abs(f_new), 1.0) < rel_tol
                     or bool(g_new.abs().max() < grad_tol))
        x, f, g = x_new, f_new, g_new
        if converged:
            break
    return LBFGSPath(torch.stack(xs), torch.tensor(fs, dtype=x0.dtype, device=x0.device),
                     torch.stack(gs), num_evals)


def curvature_history(path: LBFGSPath, history_size: int):
    r"""For every iterate ``l = 1..L`` of ``path``: ``(alpha_l, S_l, Y_l)``, the diagonal
    and the last ``history_size`` accepted updates as ``(D, m_l)`` columns, with the
    curvature check :math:`s^\top y > \epsilon \lVert y\rVert^2` and the diagonal update of
    the paper's Algorithm 3 (see the module docstring)."""
    eps = torch.finfo(path.x.dtype).eps
    alpha = torch.ones_like(path.x[0])
    s_all, y_all = path.x.diff(dim=0), path.grad.diff(dim=0)
    accepted: list[int] = []
    out = []
    for j in range(s_all.shape[0]):
        s, y = s_all[j], y_all[j]
        b = y.dot(s)
        if bool(b > eps * y.dot(y)):
            a = (y * alpha * y).sum()
            c = (s / alpha * s).sum()
            inv = a / (b * alpha) + y * y / b - a * s * s / (b * c * alpha * alpha)
            if bool((inv > 0).all()) and bool(torch.isfinite(inv).all()):
                alpha = 1.0 / inv
            accepted = (accepted + [j])[-history_size:]
        out.append((alpha, s_all[accepted].T, y_all[accepted].T))
    return out


def gaussian_at(x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor, S: torch.Tensor,
                Y: torch.Tensor) -> LBFGSNormal | None:
    r""":math:`q = \mathcal N(x - \Sigma\,\nabla f(x), \Sigma)` with the L-BFGS inverse
    Hessian :math:`\Sigma = \operatorname{diag}(\alpha) + \beta\gamma\beta^\top` of the
    updates ``S``, ``Y`` (``(D, m)``, ``m`` may be 0); ``None`` where the factors are not
    positive definite (rounding)."""
    scale = alpha.sqrt()
    if S.shape[1] == 0:
        return LBFGSNormal(x - alpha * grad, scale, x.new_zeros((x.shape[0], 0)),
                           x.new_zeros((0, 0)))
    sty = S.T @ Y
    R = torch.triu(sty)
    eye_m = torch.eye(S.shape[1], dtype=x.dtype, device=x.device)
    r_inv = torch.linalg.solve_triangular(R, eye_m, upper=True)
    beta = torch.cat([alpha[:, None] * Y, S], dim=1)
    lower = r_inv.T @ (torch.diag(torch.diagonal(sty)) + Y.T @ (alpha[:, None] * Y)) @ r_inv
    gamma = torch.cat([torch.cat([torch.zeros_like(R), -r_inv], dim=1),
                       torch.cat([-r_inv.T, lower], dim=1)], dim=0)
    loc = x - (alpha * grad + beta @ (gamma @ (beta.T @ grad)))
    Q, Rq = torch.linalg.qr(beta / scale[:, None])
    inner = Rq @ gamma @ Rq.T
    inner = torch.eye(inner.shape[0], dtype=x.dtype, device=x.device) + 0.5 * (inner + inner.T)
    L, info = torch.linalg.cholesky_ex(inner)
    if bool(info != 0) or not bool(torch.isfinite(loc).all()):
        return None
    return LBFGSNormal(loc, scale, Q, L)


class LBFGSNormal(dist.TorchDistribution):
    r"""The Gaussian :math:`\mathcal N(\mu, \Sigma)` with
    :math:`\Sigma = \operatorname{diag}(\sigma)(I + Q(LL^\top - I)Q^\top)
    \operatorname{diag}(\sigma)`, ``Q`` with orthonormal columns (``(..., D, k)``, zero
    columns allowed as padding) and ``L`` lower triangular (``(..., k, k)``, identity rows
    as padding). A draw is :math:`\mu + \sigma \odot (u + Q(L - I)Q^\top u)`,
    :math:`u \sim \mathcal N(0, I)`; ``log_prob`` is that draw's exact density, from
    :math:`\log\det\Sigma = 2\sum\log\sigma + 2\sum\log\operatorname{diag} L` and
    :math:`\Sigma^{-1} = \operatorname{diag}(\sigma)^{-1}(I + Q((LL^\top)^{-1} - I)Q^\top)
    \operatorname{diag}(\sigma)^{-1}`.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, Q: torch.Tensor,
                 L: torch.Tensor, validate_args=None):
        self.loc, self.scale, self.Q, self.L = loc, scale, Q, L
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    @staticmethod
    def stack(components: list[LBFGSNormal]) -> LBFGSNormal:
        """The components (batch shape ``()``) as one distribution of batch shape ``(K,)``,
        their factors padded to a common rank."""
        k = max(c.Q.shape[-1] for c in components)
        Qs, Ls = [], []
        for c in components:
            pad = k - c.Q.shape[-1]
            Qs.append(torch.nn.functional.pad(c.Q, (0, pad)))
            L = torch.eye(k, dtype=c.L.dtype, device=c.L.device)
            L[:k - pad, :k - pad] = c.L
            Ls.append(L)
        return LBFGSNormal(torch.stack([c.loc for c in components]),
                           torch.stack([c.scale for c in components]),
                           torch.stack(Qs), torch.stack(Ls))

    def expand(self, batch_shape, _instance=None) -> LBFGSNormal:
        batch_shape = torch.Size(batch_shape)
        d, k = self.Q.shape[-2:]
        return LBFGSNormal(self.loc.expand(batch_shape + (d,)),
                           self.scale.expand(batch_shape + (d,)),
                           self.Q.expand(batch_shape + (d, k)),
                           self.L.expand(batch_shape + (k, k)))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        k = self.L.shape[-1]
        eye = torch.eye(k, dtype=self.L.dtype, device=self.L.device)
        inner = self.L @ self.L.transpose(-1, -2) - eye
        return self.scale ** 2 * (1 + ((self.Q @ inner) * self.Q).sum(-1))

    @property
    def covariance_matrix(self) -> torch.Tensor:
        r""":math:`\Sigma` as a dense ``(..., D, D)`` matrix (e.g. to start a flow guide on it)."""
        k, d = self.L.shape[-1], self.loc.shape[-1]
        eye = torch.eye(k, dtype=self.L.dtype, device=self.L.device)
        inner = self.Q @ (self.L @ self.L.transpose(-1, -2) - eye) @ self.Q.transpose(-1, -2)
        inner = inner + torch.eye(d, dtype=self.loc.dtype, device=self.loc.device)
        return self.scale[..., :, None] * inner * self.scale[..., None, :]

    def rsample(self, sample_shape=()) -> torch.Tensor:
        u = torch.randn(self._extended_shape(torch.Size(sample_shape)), dtype=self.loc.dtype,
                        device=self.loc.device)
        if self.Q.shape[-1]:
            ur = self.Q.transpose(-1, -2) @ u[..., None]
            u = u + (self.Q @ (self.L @ ur - ur))[..., 0]
        return self.loc + self.scale * u

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        z = (value - self.loc) / self.scale
        quad = (z * z).sum(-1)
        if self.Q.shape[-1]:
            zr = self.Q.transpose(-1, -2) @ z[..., None]
            solved = torch.cholesky_solve(zr, self.L.expand(zr.shape[:-2] + self.L.shape[-2:]))
            quad = quad + ((solved - zr) * zr).sum((-1, -2))
        logdet = 2 * (self.scale.log().sum(-1)
                      + torch.diagonal(self.L, dim1=-2, dim2=-1).log().sum(-1))
        return -0.5 * (self.loc.shape[-1] * math.log(2 * math.pi) + logdet + quad)
