r"""Pathfinder: quasi-Newton variational inference (Zhang, Carpenter, Gelman & Vehtari 2022,
"Pathfinder: Parallel quasi-Newton variational inference", JMLR 23(306)).

On the model's unconstrained space (Pyro's ``biject_to`` transforms, their log-Jacobians
added to the log joint, as NUTS sees it), each of ``num_paths`` paths

1. starts at :math:`\theta_0 \sim \mathcal U(-s, s)^D` (``init_scale`` :math:`s`) and runs
   L-BFGS on :math:`-\log p(\theta, x)` (:func:`~pyro_dgm.inference.lbfgs_gaussian.lbfgs_path`);
2. at every iterate builds the Gaussian :math:`q_l = \mathcal N(\theta_l + \Sigma_l \nabla
   \log p(\theta_l), \Sigma_l)` with the L-BFGS inverse Hessian :math:`\Sigma_l` (diagonal plus
   rank :math:`2m`, ``history_size`` :math:`m`; see :mod:`~pyro_dgm.inference.lbfgs_gaussian`);
3. keeps the iterate with the largest Monte Carlo ELBO
   :math:`\frac1K\sum_k \log p(\phi_k, x) - \log q_l(\phi_k)`, :math:`\phi_k \sim q_l`
   (``num_elbo_draws`` :math:`K`).

With several paths, ``num_draws`` draws from each path's Gaussian :math:`q_j` get the log
importance ratios :math:`\log p(\phi, x) - \log q_j(\phi)`, which are Pareto-smoothed together
(:func:`~pyro_dgm.inference.psis.psis_smooth`); the paper's multi-path output is
``num_draws`` draws resampled with those weights (:attr:`Pathfinder.draws`).

**What the guide samples and scores.** A resampled set of points has no density, so the
guide is the mixture the resampling chooses between: :math:`q(\theta) = \sum_j w_j
q_j(\theta)` with :math:`w_j` the share of the smoothed importance weight that path
:math:`j`'s draws carry (a path stuck in a minor mode, whose draws the target rates low, gets a
small weight; paths in the same mode share it). Calling the guide draws from this mixture and
scoring its trace gives :math:`\log q` of the mixture (plus the constraint Jacobians, as for
every :class:`~pyro.infer.autoguide.AutoContinuous` guide), so the draws and their ``log q``
agree and a PSIS diagnostic of the guide is meaningful. Within a path, it is the Gaussian only;
the smoothed weights do not reshape it. With one path the guide is that path's Gaussian.

Example::

    >>> guide = Pathfinder(model, num_paths=4)
    >>> guide.fit(data)
    >>> guide.num_grad_evals, guide.khat
    >>> samples = pyro.infer.Predictive(model, guide=guide, num_samples=1000)(data)
    >>> mcmc = MCMC(NUTS(model, init_strategy=init_to_pathfinder(model, data)), 500)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median, init_to_uniform
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from pyro_dgm._validation import check_int, check_positive, check_probability
from pyro_dgm.inference.lbfgs_gaussian import (
    LBFGSNormal,
    curvature_history,
    gaussian_at,
    lbfgs_path,
)
from pyro_dgm.inference.psis import psis_smooth

__all__ = ["Pathfinder", "init_to_pathfinder"]

_DRAWS_PLATE = "_pathfinder_draws"
_MAX_START_TRIES = 100
_REL_TOL_FLOAT64 = 1e4 * torch.finfo(torch.float64).eps  # Stan's tol_rel_obj


class _NotBatched(ValueError):
    pass


class Pathfinder(AutoContinuous):
    r"""Pathfinder variational approximation as a Pyro :class:`AutoGuide` (see the module
    docstring for the algorithm and what the guide's ``log q`` means).

    :param model: a Pyro model with continuous latent sites only.
    :param num_paths: independent L-BFGS paths (Stan's default 4).
    :param history_size: L-BFGS history :math:`m` (Stan: 5; the issue's default 6). The
        covariance is exact only on the :math:`\le 2m` directions L-BFGS stepped in and the
        Gilbert-Lemarechal diagonal (a *conditional* variance) elsewhere, so on a dense target
        with :math:`D \gg 2m` the marginal sds come out too small; ``history_size >= D``
        with ``wolfe_c2=0.01`` recovers a dense Gaussian when L-BFGS takes :math:`D` steps
        before it converges (e.g. :math:`D = 10`, not :math:`D = 100`, condition number 100;
        see ``docs/pathfinder.md``).
    :param num_draws: draws per path for the importance resampling, and the size of the
        resampled set :attr:`draws`.
    :param num_elbo_draws: Monte Carlo draws per ELBO estimate (Stan's default 25).
    :param max_iters: most L-BFGS iterations per path (Stan's default 1000).
    :param init_scale: starts uniform in ``(-init_scale, init_scale)`` per unconstrained
        coordinate (Stan's default 2).
    :param rel_tol: stop a path when the relative change of :math:`\log p` falls below this
        (default: Stan's ``tol_rel_obj``, ``1e4`` float64 epsilons, or 10 epsilons of a
        coarser dtype).
    :param grad_tol: stop when :math:`\lVert\nabla\log p\rVert_\infty` falls below this.
    :param wolfe_c2: curvature constant of the strong-Wolfe line search (0.9, as Stan); a
        small value (0.01) makes the search near exact, which costs a few more gradients per
        iteration but gives near-conjugate updates and markedly better covariances when
        ``history_size`` is at least the dimension (see ``docs/pathfinder.md``).

    After :meth:`fit`: :attr:`num_grad_evals` (log-density gradients, line searches
    included), :attr:`num_logp_evals` (log densities of ELBO and resampling draws, no
    gradient), :attr:`khat` (PSIS :math:`\hat k` of the pooled draws), :attr:`path_elbos`,
    :attr:`path_weights` and :attr:`draws` (the PSIS-resampled draws, constrained).
    """

    def __init__(self, model: Callable, *, num_paths: int = 4, history_size: int = 6,
                 num_draws: int = 1000, num_elbo_draws: int = 25, max_iters: int = 1000,
                 init_scale: float = 2.0, rel_tol: float | None = None,
                 grad_tol: float = 1e-8, wolfe_c2: float = 0.9):
        self.num_paths = check_int("num_paths", num_paths, minimum=1)
        self.history_size = check_int("history_size", history_size, minimum=1)
        self.num_draws = check_int("num_draws", num_draws, minimum=1)
        self.num_elbo_draws = check_int("num_elbo_draws", num_elbo_draws, minimum=1)
        self.max_iters = check_int("max_iters", max_iters, minimum=1)
        self.init_scale = check_positive("init_scale", init_scale)
        self.rel_tol = None if rel_tol is None else check_positive("rel_tol", rel_tol)
        self.grad_tol = check_positive("grad_tol", grad_tol, strict=False)
        self.wolfe_c2 = check_probability("wolfe_c2", wolfe_c2)
        if self.wolfe_c2 <= 1e-4:
            raise ValueError(f"wolfe_c2 must exceed c1 = 1e-4, got {wolfe_c2}")
        super().__init__(model, init_loc_fn=init_to_uniform(radius=self.init_scale))
        self.num_grad_evals = 0
        self.num_logp_evals = 0
        self.khat: float = math.nan
        self.path_elbos: list[float] = []
        self.path_weights: torch.Tensor | None = None
        self._psis_latent: torch.Tensor | None = None
        self._posterior = None
        self._batched: bool | None = None  # does the model broadcast over a draws plate?

    # -- the log density on the unconstrained space ----------------------------------------
    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        # the prototype trace hides observed sites; their plates count for the nesting too
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        dims = [-f.dim for site in trace.nodes.values() if site["type"] == "sample"
                for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
        self._nesting = max(dims, default=0)

    def _log_joint(self, z: torch.Tensor, args, kwargs) -> torch.Tensor:
        """:math:`\\log p(T(z), x) + \\log|\\det J_T(z)|` of one ``(D,)`` point (no batch
        dim) or of ``(N, D)`` points under a plate of ``N`` draws."""
        batched = z.dim() == 2
        n, nesting = (z.shape[0], self._nesting) if batched else (1, 0)
        latent = z.reshape((n,) + (1,) * nesting + z.shape[-1:]) if batched else z
        values, log_det = {}, 0.0
        for site, u in self._unpack_latent(latent):
            transform = biject_to(site["fn"].support)
            x = transform(u)
            values[site["name"]] = x
            ladj = transform.log_abs_det_jacobian(u, x)
            log_det = log_det + (ladj.reshape(n, -1).sum(-1) if batched else ladj.sum())
        with poutine.block(), _maybe_plate(n if batched else None, nesting):
            trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(
                *args, **kwargs)
        lp = log_det
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            site_lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"],
                                     site["mask"])
            if batched:
                if site_lp.dim() != nesting + 1 or site_lp.shape[0] != n:
                    raise _NotBatched(site["name"])
                site_lp = site_lp.reshape(n, -1).sum(-1)
            else:
                site_lp = site_lp.sum()
            lp = lp + site_lp
        return lp

    def _log_joint_many(self, z: torch.Tensor, args, kwargs) -> torch.Tensor:
        """Log joint of ``(N, D)`` points, no gradient; one model run when the model
        broadcasts over a draws plate, one run per point otherwise. NaN becomes ``-inf``."""
        self.num_logp_evals += z.shape[0]
        with torch.no_grad():
            lp = None
            if self._batched is not False:
                try:
                    lp = self._log_joint(z, args, kwargs)
                    self._batched = True
                except (RuntimeError, ValueError, IndexError):
                    if self._batched:
                        raise
                    self._batched = False
            if lp is None:
                lp = torch.stack([self._log_joint(p, args, kwargs) for p in z])
        return torch.nan_to_num(lp, nan=-math.inf)

    # -- fitting ---------------------------------------------------------------------------
    def _run_path(self, args, kwargs, like: torch.Tensor):
        """One path: L-BFGS from a uniform start, the best iterate's Gaussian and ELBO."""
        rel_tol = self.rel_tol or max(_REL_TOL_FLOAT64, 10 * torch.finfo(like.dtype).eps)
        for _ in range(_MAX_START_TRIES):
            x0 = (2 * torch.rand_like(like) - 1) * self.init_scale
            try:
                path = lbfgs_path(lambda z: -self._log_joint(z, args, kwargs), x0,
                                  history_size=self.history_size, max_iters=self.max_iters,
                                  rel_tol=rel_tol, grad_tol=self.grad_tol,
                                  wolfe_c2=self.wolfe_c2)
            except ValueError:  # log density not finite at the start: draw another
                self.num_grad_evals += 1
                continue
            break
        else:
            raise RuntimeError(f"Pathfinder: no finite log density at {_MAX_START_TRIES} "
                               f"starts uniform in (-{self.init_scale}, {self.init_scale})")
        self.num_grad_evals += path.num_evals
        gaussians, elbos = [], []
        factors = curvature_history(path, self.history_size)
        for step, (alpha, S, Y) in enumerate(factors, start=1):
            q = gaussian_at(path.x[step], path.grad[step], alpha, S, Y)
            if q is not None:
                phi = q.sample((self.num_elbo_draws,))
                gaussians.append(q)
                elbos.append((self._log_joint_many(phi, args, kwargs) - q.log_prob(phi)).mean())
        if not gaussians:
            return None, -math.inf
        elbos = torch.nan_to_num(torch.stack(elbos), nan=-math.inf)
        best = int(elbos.argmax())
        return gaussians[best], float(elbos[best])

    def fit(self, *args, **kwargs) -> Pathfinder:
        """Run the paths for the model's ``*args, **kwargs`` and set the guide's distribution.

        :return: ``self``.
        :raises RuntimeError: if no path yields a Gaussian with a finite ELBO.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        self._batched = None
        like = self._init_loc().detach()
        paths = [self._run_path(args, kwargs, like) for _ in range(self.num_paths)]
        self.path_elbos = [elbo for _, elbo in paths]
        comps = [q for q, elbo in paths if q is not None and math.isfinite(elbo)]
        if not comps:
            raise RuntimeError("Pathfinder: no path reached a Gaussian with a finite ELBO")
        stacked = LBFGSNormal.stack(comps)
        phi = stacked.sample((self.num_draws,))  # (num_draws, K, D)
        log_q = stacked.log_prob(phi)
        log_p = self._log_joint_many(phi.reshape(-1, phi.shape[-1]), args, kwargs)
        log_w, khat = psis_smooth(log_p - log_q.reshape(-1))
        self.khat = float(khat)
        idx = torch.multinomial(log_w.exp(), self.num_draws, replacement=True)
        self._psis_latent = phi.reshape(-1, phi.shape[-1])[idx]
        self.path_weights = torch.logsumexp(log_w.reshape(phi.shape[:2]), dim=0).exp()
        if len(comps) == 1:
            self._posterior = comps[0]
        else:
            self._posterior = dist.MixtureSameFamily(
                dist.Categorical(probs=self.path_weights), stacked)
        return self

    # -- the guide -------------------------------------------------------------------------
    def get_posterior(self, *args, **kwargs):
        """The fitted distribution of the packed unconstrained latent (see the module
        docstring).

        :raises RuntimeError: before :meth:`fit`."""
        if self._posterior is None:
            raise RuntimeError("Pathfinder: call fit(*args, **kwargs) before using the guide")
        return self._posterior

    def _loc_scale(self, *args, **kwargs):
        post = self.get_posterior()
        return post.mean, post.variance.sqrt()

    def to_constrained(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed unconstrained draws ``(N, D)`` as ``{site: (N, *shape)}`` constrained."""
        out, pos = {}, 0
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = self._unconstrained_shapes[name]
            size = shape.numel()
            u = latent[:, pos:pos + size].reshape(latent.shape[:1] + shape)
            out[name] = biject_to(site["fn"].support)(u)
            pos += size
        return out

    @property
    def draws(self) -> dict[str, torch.Tensor]:
        """The PSIS-resampled draws of the last :meth:`fit` (the paper's output), as
        ``{site: (num_draws, *shape)}`` constrained values."""
        if self._psis_latent is None:
            raise RuntimeError("Pathfinder: call fit(*args, **kwargs) first")
        return self.to_constrained(self._psis_latent)


class _maybe_plate:
    """``pyro.plate`` over ``size`` draws left of the model's plates, or nothing."""

    def __init__(self, size: int | None, nesting: int):
        self._plate = None if size is None else pyro.plate(_DRAWS_PLATE, size,
                                                           dim=-(nesting + 1))

    def __enter__(self):
        return self._plate.__enter__() if self._plate is not None else None

    def __exit__(self, *exc):
        return self._plate.__exit__(*exc) if self._plate is not None else False


def init_to_pathfinder(model: Callable, *args, guide: Pathfinder | None = None,
                       pathfinder_options: dict | None = None, **kwargs) -> Callable:
    """An ``init_strategy`` for Pyro's :class:`~pyro.infer.NUTS` / :class:`~pyro.infer.HMC`
    and this package's kernels: every chain (every call round over the sites) starts at a
    fresh joint draw from the Pathfinder approximation of ``model(*args, **kwargs)``.
    Sites the guide does not cover start at the prior median. A strategy called with a
    batched site (vectorized chains: ``site["fn"]`` of shape ``(C, 1.., *shape)``) gets one
    draw per chain.

    :param guide: a fitted :class:`Pathfinder` to draw from; default: one fitted here with
        ``pathfinder_options`` (keyword arguments of :class:`Pathfinder`).

    Example::

        >>> kernel = NUTS(model, init_strategy=init_to_pathfinder(model, data))
    """
    if guide is None:
        guide = Pathfinder(model, **(pathfinder_options or {})).fit(*args, **kwargs)
    elif guide._posterior is None:
        guide.fit(*args, **kwargs)
    shapes = {name: site["value"].shape
              for name, site in guide.prototype_trace.iter_stochastic_nodes()}
    state: dict[int, tuple[set, dict]] = {}

    def strategy(site):
        name = site["name"]
        if name not in shapes:
            return init_to_median(site)
        target = site["fn"].shape()
        n = max(target.numel() // max(shapes[name].numel(), 1), 1)
        seen, values = state.get(n, (set(), {}))
        if not values or name in seen:  # a new chain (or a retry): a new joint draw
            with torch.no_grad():
                latent = guide.get_posterior().sample((n,))
            seen, values = set(), guide.to_constrained(latent)
            state[n] = (seen, values)
        seen.add(name)
        return values[name].reshape(target).detach()

    return strategy
