r"""Adaptive random-walk Metropolis–Hastings for Pyro models.

In the unconstrained space of the model's latent sites (the transforms HMC uses), the chain
at :math:`u` proposes :math:`u' = u + h L\varepsilon`, :math:`\varepsilon\sim\mathcal N(0, I)`,
and accepts with probability

.. math::

    \alpha(u, u') = \min\{1, \exp(U(u) - U(u'))\},
    \qquad U(u) = -\log p(x, T^{-1}(u)) - \log\lvert\det J_{T^{-1}}(u)\rvert,

the potential energy of Pyro's :func:`~pyro.infer.mcmc.util.initialize_model`. During warm-up
the step size :math:`h` follows Robbins–Monro towards acceptance 0.234 (Roberts, Gelman &
Gilks 1997) and :math:`LL^\top` is the covariance of warm-up draws (Haario, Saksman &
Tamminen 2001), dense or diagonal; see :mod:`pyro_dgm.inference.adaptation`. After warm-up
the kernel is fixed, so the chain is an exact Metropolis–Hastings chain for the posterior.

:class:`RandomWalkMH` runs one chain under :class:`pyro.infer.MCMC` unchanged (discrete
latent sites are then enumerated away as for NUTS), and all chains at once as a batch under
:class:`pyro_dgm.inference.MCMC` with ``chain_method="vectorized"``. Vectorized chains adapt
from the chains in the main group of log density only, and a run that ends with stuck chains
or chains in a minor mode warns (:class:`~pyro_dgm.inference.chain_health.ChainHealthWarning`)
naming them; each chain's flags are in the diagnostics and in ArviZ's ``sample_stats``
(:mod:`pyro_dgm.inference.chain_health`).

Example::

    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y)):
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> mcmc = pyro.infer.MCMC(RandomWalkMH(model), num_samples=2000, warmup_steps=1000)
    >>> mcmc.run(y)
    >>> vec = pyro_dgm.inference.MCMC(RandomWalkMH(model), num_samples=1000, num_chains=64,
    ...                               chain_method="vectorized")
    >>> vec.run(y)
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_uniform
from pyro.infer.mcmc.util import initialize_model

from pyro_dgm.inference.adaptation import ProposalAdapter, check_proposal_args
from pyro_dgm.inference.chain_health import (
    ChainHealth,
    chain_health,
    per_chain_data,
    warn_chain_health,
)
from pyro_dgm.inference.chain_model import (
    site_log_prob,
)
from pyro_dgm.inference.mcmc import VectorizedKernel
from pyro_dgm.inference.metropolis import MHState, mh_step

__all__ = ["RandomWalkMH"]


def _check_arguments(model, potential_fn, covariance: str, target_accept: float,
                     step_size: float | None) -> tuple[str, float, float | None]:
    """Every check of :class:`RandomWalkMH`'s arguments, at construction."""
    if (model is None) == (potential_fn is None):
        raise ValueError("RandomWalkMH: pass exactly one of model and potential_fn")
    return check_proposal_args(covariance, target_accept, step_size)


class RandomWalkMH(VectorizedKernel):
    r"""Random-walk Metropolis–Hastings with an adapted Gaussian proposal.

    :param model: a Pyro model; or give ``potential_fn``.
    :param potential_fn: :math:`U` of a dict of unconstrained tensors; needs
        ``initial_params``. Under ``chain_method="vectorized"`` it receives tensors with a
        leading chain dimension and returns one value per chain.
    :param step_size: initial step size :math:`h` (default :math:`2.38/\sqrt D`).
    :param target_accept: acceptance probability the step size is tuned to, in (0, 1).
    :param covariance: ``"dense"`` or ``"diag"`` adapted proposal covariance, or
        ``"identity"`` (step size only).
    :param adapt_step_size: tune :math:`h` during warm-up.
    :param init_strategy: per-site initialization (Pyro's ``init_to_*``).
    :param transforms: site -> transform to unconstrained space (default: as HMC).
    :param max_plate_nesting: the model's plate nesting (default: found by tracing).
    """

    def __init__(self, model=None, potential_fn=None, *, step_size: float | None = None,
                 target_accept: float = 0.234, covariance: str = "dense",
                 adapt_step_size: bool = True, init_strategy=init_to_uniform,
                 transforms: dict | None = None, max_plate_nesting: int | None = None):
        self.covariance, self.target_accept, self.step_size = _check_arguments(
            model, potential_fn, covariance, target_accept, step_size)
        self.model = model
        self.potential_fn = potential_fn
        self.adapt_step_size = adapt_step_size
        self.init_strategy = init_strategy
        self.transforms = transforms
        self._user_transforms = transforms
        self.max_plate_nesting = max_plate_nesting
        self._t = 0
        super().__init__()

    # -- Pyro's kernel API: one chain ------------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        """Prepare one chain (called by :class:`pyro.infer.MCMC`)."""
        self._vectorized = False
        self._shared_target = True
        user_init = self._user_init
        if self.model is not None:
            try:
                init, potential, transforms, _ = initialize_model(
                    self.model, model_args=args, model_kwargs=kwargs,
                    transforms=self._user_transforms, max_plate_nesting=self.max_plate_nesting,
                    init_strategy=self.init_strategy, initial_params=user_init)
            except ValueError as e:
                if "initial params" not in str(e):
                    raise
                raise ValueError(
                    "RandomWalkMH: non-finite log density at every initial point tried: "
                    + self._explain_single(args, kwargs)) from None
            self.transforms = transforms
            init = {k: v.detach() for k, v in init.items()}
            self._check_start(potential, init, lambda: self._explain_single(args, kwargs, init))
        else:
            init, potential = self._user_start(user_init)
        self._initial_params = init

        def batched_potential(params):
            return potential({k: v[0] for k, v in params.items()}).reshape(1)

        self._start({k: v.unsqueeze(0) for k, v in init.items()}, batched_potential,
                    warmup_steps)

    def _explain_single(self, args, kwargs, init=None) -> str:
        """Name the sites with a non-finite log density (one un-vectorized trace)."""
        model = self.model
        if init is not None:
            constrained = {k: self.transforms[k].inv(v) if k in self.transforms else v
                           for k, v in init.items()}
            model = poutine.condition(model, data=constrained)
        else:
            model = InitMessenger(self.init_strategy)(model)
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        bad = [name for name, node in trace.nodes.items()
               if node["type"] == "sample" and not torch.isfinite(site_log_prob(node)).all()]
        return f"site {bad[0]!r}" if bad else "the log |Jacobian| of the transforms"

    # -- vectorized chains ---------------------------------------------------------------------
    def setup_chains(self, num_chains: int, warmup_steps: int, args: tuple = (),
                     kwargs: dict | None = None, initial_params: dict | None = None):
        """Prepare ``num_chains`` chains advancing as one batch (used by
        :class:`pyro_dgm.inference.MCMC`); ``initial_params`` have a leading chain dim.

        :raises NotVectorizable: the model does not broadcast over chains, or has discrete
            latent sites (enumerating them needs one chain at a time).
        """
        self._vectorized = True
        self._shared_target = True
        kwargs = kwargs or {}
        if self.potential_fn is not None:
            init, potential = self._user_start(initial_params)
        else:
            cm = self._continuous_chain_model(
                args, kwargs, num_chains, "vectorized RandomWalkMH cannot enumerate it (use "
                "Gibbs, or one chain per process)")
            self._shared_target = not per_chain_data(cm)
            potential = self._chain_potential(cm)
            init = self._chain_init(cm, potential, initial_params)
        self._initial_params = init
        self._start(init, potential, warmup_steps)

    # -- the sampler proper (a batch of C >= 1 chains) -------------------------------------
    def _start(self, params: dict, potential, warmup_steps: int) -> None:
        self._set_layout(params)
        self._potential = potential
        self._warmup_steps = warmup_steps
        z = self._flatten(params)
        self.adapter = ProposalAdapter(max(z.shape[-1], 1), warmup_steps,
                                       covariance=self.covariance,
                                       target_accept=self.target_accept,
                                       step_size=self.step_size,
                                       adapt_step_size=self.adapt_step_size,
                                       screen=self._shared_target,
                                       spread=self._shared_target)
        self._state = self.adapter.init(self._num_chains, dtype=z.dtype, device=z.device)
        with torch.no_grad():
            self._chain = MHState(z, -potential(params).detach())
        self._t = 0
        self._accept_count = torch.zeros(self._num_chains, dtype=z.dtype, device=z.device)
        self._accept_prob_sum = torch.zeros((), dtype=z.dtype, device=z.device)  # warm-up
        self._log_density_sum = torch.zeros_like(self._accept_count)  # after warm-up
        self._scale = None
        self._last = None

    @torch.no_grad()
    def _step(self) -> None:
        """One MH step of every chain; during warm-up the proposal adapts, after it the
        kernel is fixed (:math:`hL` computed once)."""
        z = self._chain.position
        warmup = self._t < self._warmup_steps
        if warmup:
            proposal = self.adapter.propose(self._state, z)
        else:
            if self._scale is None:  # no warm-up at all
                self._scale = self.adapter.scaled_factor(self._state)
            proposal = z + self.adapter.apply(self._scale, torch.randn_like(z))
        energy = self._potential(self._unflatten(proposal))
        self._chain, info = mh_step(self._chain, proposal, -energy, event_dim=1)
        if warmup:
            self._state = self.adapter.adapt(self._state, self._t, self._chain.position,
                                             info.accept_prob, self._chain.log_density)
            self._accept_prob_sum += info.accept_prob.mean()
        else:
            self._accept_count += info.accepted
            self._log_density_sum += self._chain.log_density
        self._t += 1
        if self._t == self._warmup_steps:
            self._scale = self.adapter.scaled_factor(self._state)

    def sample(self, params):
        """One Metropolis–Hastings step from ``params`` (batched under vectorized chains)."""
        if params is not self._last and self._names:  # moved by someone else: re-score
            batched = params if self._vectorized else {k: v.unsqueeze(0)
                                                       for k, v in params.items()}
            with torch.no_grad():
                self._chain = MHState(self._flatten(batched), -self._potential(batched))
        if self._names:
            self._step()
        out = self._unflatten(self._chain.position)
        if not self._vectorized:
            out = {k: v[0] for k, v in out.items()}
        self._last = out
        return out

    def potential_energy(self, params: dict) -> torch.Tensor:
        """:math:`U` of ``params`` (unconstrained, batched like :meth:`sample`'s) after set-up:
        one value per chain under vectorized chains."""
        batched = params if self._vectorized else {k: v.unsqueeze(0) for k, v in params.items()}
        with torch.no_grad():
            energy = self._potential(batched)
        return energy if self._vectorized else energy[0]

    # -- diagnostics --------------------------------------------------------------------------
    @property
    def current_step_size(self) -> float:
        return float(self._state.log_step.exp())

    def logging(self):
        return OrderedDict([
            ("step size", f"{self.current_step_size:.2e}"),
            ("acc. prob", f"{self._acceptance():.3f}"),
        ])

    def _acceptance(self) -> float:
        """Mean acceptance probability during warm-up, acceptance rate after it."""
        if self._t <= self._warmup_steps:
            return float(self._accept_prob_sum) / max(self._t, 1)
        return float(self._accept_count.mean()) / (self._t - self._warmup_steps)

    def chain_health(self) -> ChainHealth:
        """Per-chain acceptance, mean log density, stuck and minor-mode flags over the
        sampling phase (:mod:`pyro_dgm.inference.chain_health`; the log density is that of
        the unconstrained space, :math:`-U`)."""
        draws = max(self._t - self._warmup_steps, 0)
        return chain_health(self._accept_count, self._log_density_sum, draws,
                            compare_chains=self._shared_target)

    def check_health(self, stacklevel: int = 1) -> None:
        """Warn (:class:`~pyro_dgm.inference.chain_health.ChainHealthWarning`) about stuck
        and minor-mode chains; :class:`~pyro_dgm.inference.MCMC` calls it after a
        vectorized run."""
        warn_chain_health(self.chain_health(), type(self).__name__, stacklevel + 1)

    def chain_diagnostics(self) -> list[dict]:
        """Per chain: ``divergences`` (none), ``acceptance rate`` after warm-up, ``step size``,
        and from :meth:`chain_health` ``stuck chain``, ``minor mode`` (0 or 1) and
        ``mean log density``."""
        health = self.chain_health()
        step = self.current_step_size
        columns = zip(health.acceptance.tolist(), health.stuck.tolist(),
                      health.minor_mode.tolist(), health.mean_log_density.tolist(), strict=True)
        return [{"divergences": [], "acceptance rate": rate, "step size": step,
                 "stuck chain": float(stuck), "minor mode": float(minor),
                 "mean log density": mean_ld}
                for rate, stuck, minor, mean_ld in columns]
