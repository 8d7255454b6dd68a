r"""Gibbs sampling for Pyro models: exact conditionals of discrete sites, adaptive MH within
Gibbs for continuous ones, or conditionals the user supplies.

One sweep visits every latent site (in model order, or a fresh random order each sweep with
``scan="random"``) and draws it from its full conditional given all other sites,

.. math::

    p(\theta_s \mid \theta_{-s}, x) \propto p(\theta_s \mid \mathrm{pa}(s))
    \prod_{f \in \mathrm{ch}(s)} p(f \mid \mathrm{pa}(f)).

- A site with finite discrete support (Bernoulli, Categorical, ...) is drawn exactly: the
  model runs once with the site's support enumerated in a new leftmost dimension, and the
  log factors that depend on it are summed over every dimension except the site's own
  plates. All elements of a plate (every mixture assignment) are thus drawn at once, each
  from its own conditional (Gumbel-max), which is valid because plate elements are
  conditionally independent given the other sites.
- A continuous site is updated by random-walk Metropolis–Hastings in its unconstrained space
  (Metropolis-within-Gibbs), with the same warm-up adaptation as
  :class:`~pyro_dgm.inference.RandomWalkMH` (:mod:`~pyro_dgm.inference.adaptation`). The
  current and the proposed value run through the model together as two candidates, and
  plate elements are accepted independently.
- ``updates={"mu": fn}`` replaces either by a user conditional sampler (e.g. a conjugate
  update): ``fn(values, *args, **kwargs)`` receives the current constrained value of every
  latent site with a leading chain dimension, ``(num_chains, *site_shape)``, and returns a
  draw of its site of the same shape, or a distribution to draw it from.

Discrete draws are returned as floating-point tensors so that summaries and ESS work.
The model must broadcast over leading batch dimensions, as for parallel enumeration (index
with :class:`~pyro.ops.indexing.Vindex`).

Example::

    >>> def mixture(x):
    ...     locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2))
    ...         pyro.sample("x", dist.Normal(Vindex(locs)[..., z], 1.0), obs=x)
    >>> mcmc = pyro_dgm.inference.MCMC(Gibbs(mixture), num_samples=1000, num_chains=8,
    ...                                chain_method="vectorized")
    >>> mcmc.run(x)

References: Geman & Geman (1984); Gelfand & Smith (1990); Tierney (1994) for
Metropolis-within-Gibbs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from pyro.distributions import Distribution
from pyro.infer.autoguide.initialization import init_to_uniform

from pyro_dgm._validation import check_choice
from pyro_dgm.inference.adaptation import ProposalAdapter, check_proposal_args
from pyro_dgm.inference.chain_model import (
    CHAIN_PLATE,
    ChainModel,
    NotVectorizable,
    describe_nonfinite,
    site_log_prob,
)
from pyro_dgm.inference.mcmc import VectorizedKernel
from pyro_dgm.inference.metropolis import MHState, check_finite_start, mh_step

__all__ = ["SCANS", "Gibbs"]

SCANS = ("systematic", "random")


def _check_arguments(model, updates, scan: str, covariance: str, target_accept: float,
                     step_size: float | None):
    """Every check of :class:`Gibbs`'s arguments, at construction; returns them validated
    (``updates`` as a new dict)."""
    if not callable(model):
        raise ValueError("model must be callable")
    updates = dict(updates or {})
    for name, fn in updates.items():
        if not callable(fn):
            raise ValueError(f"updates[{name!r}] must be callable, got {type(fn).__name__}")
    covariance, target_accept, step_size = check_proposal_args(covariance, target_accept,
                                                               step_size)
    return updates, check_choice("scan", scan, SCANS), covariance, target_accept, step_size


class Gibbs(VectorizedKernel):
    """Gibbs sampler over the latent sites of a Pyro model.

    :param model: a Pyro model.
    :param updates: site name -> conditional sampler ``fn(values, *args, **kwargs)``.
    :param scan: ``"systematic"`` (model order) or ``"random"`` (a fresh random order each
        sweep, shared by all chains).
    :param random_walk: update continuous sites without a conditional in ``updates`` by
        adaptive random-walk MH; with ``False`` every continuous site needs one.
    :param target_accept: acceptance probability the MH step sizes are tuned to.
    :param covariance: MH proposal covariance per site: ``"dense"``, ``"diag"``,
        ``"identity"``.
    :param step_size: initial MH step size (default :math:`2.38/\\sqrt{d}`, ``d`` the
        site's event size).
    :param init_strategy: initialization of continuous sites (discrete: a prior draw).
    :param max_plate_nesting: the model's plate nesting (default: found by tracing).
    """

    def __init__(self, model, updates: dict[str, Callable] | None = None, *,
                 scan: str = "systematic", random_walk: bool = True,
                 target_accept: float = 0.234, covariance: str = "dense",
                 step_size: float | None = None, init_strategy=init_to_uniform,
                 max_plate_nesting: int | None = None):
        (self.updates, self.scan, self.covariance, self.target_accept,
         self.step_size) = _check_arguments(model, updates, scan, covariance, target_accept,
                                            step_size)
        self.model = model
        self.random_walk = bool(random_walk)
        self.init_strategy = init_strategy
        self.max_plate_nesting = max_plate_nesting
        self.transforms = None
        super().__init__()

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        """Prepare one chain (called by :class:`pyro.infer.MCMC`)."""
        init = self._user_init
        if init is not None:
            init = {k: v.unsqueeze(0) for k, v in init.items()}
        self._setup(1, warmup_steps, args, kwargs, init)
        self._vectorized = False
        self._initial_params = {k: v[0] for k, v in self._params().items()}
        self._last = None

    def setup_chains(self, num_chains: int, warmup_steps: int, args: tuple = (),
                     kwargs: dict | None = None, initial_params: dict | None = None):
        """Prepare ``num_chains`` chains advancing as one batch (used by
        :class:`pyro_dgm.inference.MCMC`)."""
        self._setup(num_chains, warmup_steps, args, kwargs or {}, initial_params)
        self._vectorized = True
        self._initial_params = self._params()
        self._last = None

    def _setup(self, num_chains, warmup_steps, args, kwargs, initial_params):
        cm = ChainModel(self.model, args, kwargs, num_chains,
                        max_plate_nesting=self.max_plate_nesting)
        self._cm, self._args, self._kwargs = cm, tuple(args), dict(kwargs)
        unknown = sorted(set(self.updates) - set(cm.sites))
        if unknown:
            raise ValueError(f"updates: {unknown[0]!r} is not a latent sample site of the model "
                             f"(latent sites: {', '.join(cm.sites)})")
        self._plan = {name: self._plan_site(site) for name, site in cm.sites.items()}
        self.transforms = {name: s.to_constrained.inv for name, s in cm.sites.items()
                           if not s.discrete and s.to_constrained is not None}
        self._warmup_steps = warmup_steps
        self._t = 0
        self._values = self._initial_values(initial_params)
        self._dtype = next((v.dtype for v in self._values.values() if v.is_floating_point()),
                           torch.get_default_dtype())
        self._analyse_dependencies()
        self._adapters, self._states, self._accepts = {}, {}, {}
        for name, kind in self._plan.items():
            if kind != "mh":
                continue
            u = cm.unconstrain(name, self._values[name])
            dim = cm.sites[name].unconstrained_shape[
                len(cm.sites[name].shape) - cm.sites[name].event_dim:].numel()
            adapter = ProposalAdapter(dim, warmup_steps, covariance=self.covariance,
                                      target_accept=self.target_accept,
                                      step_size=self.step_size)
            self._adapters[name] = adapter
            self._states[name] = adapter.init(u.numel() // dim, dtype=u.dtype, device=u.device)
            self._accepts[name] = torch.zeros(num_chains, dtype=u.dtype, device=u.device)

    def _plan_site(self, site) -> str:
        name = site.name
        if name in self.updates:
            return "user"
        if site.discrete:
            if not site.enumerable:
                raise ValueError(
                    f"site {name!r}: Gibbs cannot enumerate a discrete distribution with "
                    f"infinite support; pass updates={{{name!r}: fn}}")
            return "enumerate"
        if site.to_constrained is None:
            raise ValueError(f"site {name!r}: continuous site with no transform to "
                             f"unconstrained space; Gibbs has no way to update it: pass "
                             f"updates={{{name!r}: fn}}")
        if not self.random_walk:
            raise ValueError(f"site {name!r}: continuous site with no conditional in updates "
                             f"and random_walk=False; Gibbs has no way to update it")
        return "mh"

    def _initial_values(self, initial_params):
        cm = self._cm
        if initial_params is not None:
            missing = sorted(set(cm.sites) - set(initial_params))
            if missing:
                raise ValueError(f"initial_params: no value for site {missing[0]!r}")
            values = {}
            for name, site in cm.sites.items():
                v = initial_params[name].detach()
                if site.discrete:
                    values[name] = v.reshape(site.padded).to(site.dtype)
                else:
                    values[name] = cm.constrain(name, v.reshape(site.unconstrained_padded))[0]
            check_finite_start(cm.log_joint(values), lambda: describe_nonfinite(cm, values))
            return values
        return cm.valid_init_values(self.init_strategy, what="Gibbs")

    def _analyse_dependencies(self):
        """Which factors each updated site enters, and which plate dims stay independent."""
        cm = self._cm
        P = cm.max_plate_nesting
        self._dependents, self._sum_dims, self._support = {}, {}, {}
        for name, kind in self._plan.items():
            if kind == "user":
                continue
            site = cm.sites[name]
            if kind == "enumerate":
                fn = self._prototype_fn(name)
                support = fn.enumerate_support(expand=False)
                cands = support.reshape((support.shape[0],) + (1,) * (P + 1)
                                        + tuple(fn.event_shape))
                self._support[name] = cands
            else:
                u = cm.unconstrain(name, self._values[name])
                cands = cm.constrain(name, torch.stack([u, u + 0.1 * torch.randn_like(u)]))[0]
            try:
                trace = cm.trace({**self._values, name: cands})
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                raise NotVectorizable(
                    f"the model fails with candidate values of site {name!r} in a new leftmost "
                    "batch dimension (write it to broadcast, e.g. index with Vindex): "
                    f"{str(e).splitlines()[0]}") from e
            K = cands.shape[0]
            # plates, not dims: a factor in another plate at the same dim couples the elements
            dependents, keep = [], set(_plate_frames(trace.nodes[name]))
            for f in cm.factors:
                lp = site_log_prob(trace.nodes[f])
                if lp.dim() > P + 2 or (lp.dim() == P + 2 and lp.shape[1] != cm.num_chains):
                    raise NotVectorizable(
                        f"site {f!r}: log density of shape {tuple(lp.shape)} while site "
                        f"{name!r} is enumerated; the model does not broadcast over leading "
                        "batch dimensions")
                if lp.dim() == P + 2 and lp.shape[0] == K and K > 1:
                    dependents.append(f)
                    keep &= _plate_frames(trace.nodes[f])
            kept = {dim for _, dim in keep}
            sum_dims = tuple(d for d in range(-P, 0) if d not in kept)
            if kind == "enumerate":
                batch = site.padded[1:len(site.padded) - len(fn.event_shape)]
                coupled = [d for d in sum_dims if batch[d] > 1]
                if coupled:
                    raise ValueError(
                        f"site {name!r}: its elements along dim {coupled[0]} enter a common "
                        "factor, so they cannot be drawn one at a time; put the site and its "
                        "dependents in a plate over that dim")
            self._dependents[name] = dependents
            self._sum_dims[name] = sum_dims

    def _prototype_fn(self, name):
        return self._cm.trace(self._values).nodes[name]["fn"]

    # -- parameters in Pyro's convention ------------------------------------------------------
    def _params(self) -> dict[str, torch.Tensor]:
        """Unconstrained continuous values and float discrete values, ``(C, *shape)``."""
        cm, C = self._cm, self._cm.num_chains
        out = {}
        for name, site in cm.sites.items():
            x = self._values[name]
            if site.discrete:
                out[name] = x.reshape((C,) + site.shape).to(self._dtype)
            elif site.to_constrained is not None:
                out[name] = cm.unconstrain(name, x).reshape((C,) + site.unconstrained_shape)
            else:
                out[name] = x.reshape((C,) + site.shape)
        return out

    def _load(self, params: dict[str, torch.Tensor]) -> None:
        cm = self._cm
        for name, site in cm.sites.items():
            v = params[name]
            if site.discrete:
                self._values[name] = v.reshape(site.padded).to(site.dtype)
            elif site.to_constrained is not None:
                self._values[name] = cm.constrain(name, v.reshape(site.unconstrained_padded))[0]
            else:
                self._values[name] = v.reshape(site.padded)

    # -- one sweep --------------------------------------------------------------------------------
    def sample(self, params):
        """One Gibbs sweep over all latent sites (batched under vectorized chains)."""
        if params is not self._last:
            self._load(params if self._vectorized else {k: v.unsqueeze(0)
                                                        for k, v in params.items()})
        names = list(self._plan)
        if self.scan == "random":
            names = [names[i] for i in torch.randperm(len(names)).tolist()]
        with torch.no_grad():
            for name in names:
                getattr(self, f"_update_{self._plan[name]}")(name)
        self._t += 1
        out = self._params()
        if not self._vectorized:
            out = {k: v[0] for k, v in out.items()}
        self._last = out
        return out

    def _conditional(self, name: str, cands: torch.Tensor) -> torch.Tensor:
        """Log density of each candidate value of ``name`` given the rest, summed over the
        dims that do not stay independent: ``(K, C, *plate_dims)``."""
        trace = self._cm.trace({**self._values, name: cands})
        dims = self._sum_dims[name]
        total = 0.0
        for f in self._dependents[name]:
            lp = site_log_prob(trace.nodes[f])
            total = total + (lp.sum(dims, keepdim=True) if dims else lp)
        return total

    def _update_enumerate(self, name: str) -> None:
        support = self._support[name]
        logits = self._conditional(name, support)
        if not torch.is_tensor(logits):  # no factor depends on the site
            return
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp_min(1e-30)))
        idx = torch.argmax(logits + gumbel, dim=0)
        flat = support.reshape((support.shape[0],) + support.shape[2 + self._cm.max_plate_nesting:])
        site = self._cm.sites[name]
        self._values[name] = flat[idx].reshape(site.padded)

    def _update_mh(self, name: str) -> None:
        cm, site = self._cm, self._cm.sites[name]
        adapter, state = self._adapters[name], self._states[name]
        u = cm.unconstrain(name, self._values[name])
        flat = u.reshape(-1, adapter.dim)
        proposal = adapter.propose(state, flat).reshape(u.shape)
        x, ladj = cm.constrain(name, torch.stack([u, proposal]))
        dims = self._sum_dims[name]
        lp = self._conditional(name, x) + (ladj.sum(dims, keepdim=True) if dims else ladj)
        # every plate element (C, *plate dims) is a unit: accepted independently
        chain, info = mh_step(MHState((x[0], u), lp[0]), (x[1], proposal), lp[1],
                              event_dim=site.event_dim)
        self._values[name], new_u = chain.position
        if self._t < self._warmup_steps:
            self._states[name] = adapter.adapt(state, self._t, new_u.reshape(-1, adapter.dim),
                                               info.accept_prob)
        else:
            accepted = info.accepted
            self._accepts[name] += accepted.reshape(accepted.shape[0], -1).to(u.dtype).mean(-1)

    def _update_user(self, name: str) -> None:
        cm, site = self._cm, self._cm.sites[name]
        C = cm.num_chains
        current = {k: v.reshape((C,) + cm.sites[k].shape) for k, v in self._values.items()}
        draw = self.updates[name](current, *self._args, **self._kwargs)
        if isinstance(draw, Distribution):
            shape = tuple(draw.batch_shape + draw.event_shape)
            draw = draw.sample() if shape == (C,) + tuple(site.shape) else draw.sample((C,))
        if not torch.is_tensor(draw) or draw.shape != (C,) + tuple(site.shape):
            got = tuple(draw.shape) if torch.is_tensor(draw) else type(draw).__name__
            raise ValueError(f"updates[{name!r}] returned {got}; expected a tensor of shape "
                             f"{(C,) + tuple(site.shape)} (num_chains, *site_shape)")
        self._values[name] = draw.reshape(site.padded).to(site.dtype)

    # -- diagnostics ------------------------------------------------------------------------------
    def logging(self):
        draws = max(self._t - self._warmup_steps, 1)
        return OrderedDict((f"acc. {k}", f"{float(v.mean()) / draws:.3f}")
                           for k, v in self._accepts.items())

    def chain_diagnostics(self) -> list[dict]:
        """Per chain: ``divergences`` (none) and, for each MH site, its acceptance rate after
        warm-up and its step size; ``acceptance rate`` is the mean over MH sites."""
        draws = max(self._t - self._warmup_steps, 1)
        C = self._cm.num_chains
        out = [{"divergences": []} for _ in range(C)]
        if not self._accepts:
            return out
        rates = {k: (v / draws).tolist() for k, v in self._accepts.items()}
        steps = {k: float(s.log_step.exp()) for k, s in self._states.items()}
        for c in range(C):
            out[c]["acceptance rate"] = sum(r[c] for r in rates.values()) / len(rates)
            for k in rates:
                out[c][f"{k} acceptance rate"] = rates[k][c]
                out[c][f"{k} step size"] = steps[k]
        return out


def _plate_frames(site) -> frozenset:
    """``(name, dim)`` of a traced site's vectorized plates (not the chain plate): two
    plates at the same dim are different plates, whose elements need not correspond."""
    return frozenset((f.name, f.dim) for f in site["cond_indep_stack"]
                     if f.vectorized and f.dim is not None and f.name != CHAIN_PLATE)
