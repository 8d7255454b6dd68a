r"""ChEES-HMC: Hamiltonian Monte Carlo whose chains step in lockstep, with the trajectory
length adaptation of Hoffman, Radul & Sountsov (2021), "An Adaptive MCMC Scheme for Setting
Trajectory Lengths in Hamiltonian Monte Carlo" (AISTATS).

In the unconstrained space of the latent sites (Pyro's transforms, as for NUTS) with
potential :math:`U(\theta) = -\log p(x, T^{-1}(\theta)) - \log\lvert\det J_{T^{-1}}
(\theta)\rvert` and inverse mass matrix :math:`M^{-1} = LL^\top`, one iteration draws
:math:`r \sim \mathcal N(0, I)` (the momentum :math:`p = L^{-\top} r`) and runs
:math:`n_t` leapfrog steps of size :math:`h`,

.. math::

    r \leftarrow r - \tfrac h2 L^\top\nabla U(\theta),\quad
    \theta \leftarrow \theta + h L r,\quad
    r \leftarrow r - \tfrac h2 L^\top\nabla U(\theta),

then accepts the end point with probability :math:`\min\{1, e^{H - H'}\}`,
:math:`H = U(\theta) + \tfrac12\lVert r\rVert^2` (via
:func:`~pyro_dgm.inference.metropolis.mh_step`). All chains share :math:`h`, :math:`L` and
:math:`n_t = \lceil u_t T/h\rceil` (:math:`u_t` the Halton sequence), so each leapfrog step is
*one* batched evaluation of :math:`U` and :math:`\nabla U` for every chain. Warm-up adapts
:math:`h`, :math:`T` and :math:`M^{-1}` from cross-chain statistics
(:mod:`~pyro_dgm.inference.chees_adaptation`); afterwards the kernel is fixed and every
chain is an exact HMC chain (:math:`n_t` depends on :math:`t` only, never on the state).

No step converts a tensor to a Python number: the host learns :math:`T/h` (for
:math:`n_t`) during warm-up from a copy made two iterations earlier (non-blocking, pinned
memory on a GPU, so the device queue never drains), and after warm-up from one read at its
end. A transition with :math:`H' - H > 1000` (or a non-finite :math:`H'`) is divergent.

Per draw the kernel reports ``accept_prob``, ``step_size``, ``num_steps``, ``energy``
(:math:`H` after the step) and ``divergences``, which
:func:`pyro_dgm.compare.from_mcmc` exports as ``sample_stats``.

Example::

    >>> mcmc = MCMC(ChEESHMC(model), num_samples=500, warmup_steps=500, num_chains=64,
    ...             chain_method="vectorized")
    >>> mcmc.run(x, y)
    >>> pyro.infer.MCMC(ChEESHMC(model), num_samples=1000).run(x, y)   # one chain works too
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from pyro.infer.autoguide.initialization import init_to_uniform
from pyro.infer.mcmc.util import initialize_model

from pyro_dgm.inference.chain_model import (
    ChainModel,
    NotVectorizable,
)
from pyro_dgm.inference.chees_adaptation import ChEESAdapter, ChEESInfo, LaggedScalar
from pyro_dgm.inference.mcmc import VectorizedKernel
from pyro_dgm.inference.metropolis import MHState, mh_step

__all__ = ["ChEESHMC", "MAX_DELTA_ENERGY"]

#: an energy error above this makes a transition divergent (Stan's and Pyro's value)
MAX_DELTA_ENERGY = 1000.0


class ChEESHMC(VectorizedKernel):
    r"""HMC with ChEES trajectory-length adaptation, all chains in lockstep.

    :param model: a Pyro model (continuous latent sites); or give ``potential_fn``.
    :param potential_fn: :math:`U` of a dict of unconstrained tensors; needs
        ``initial_params``. Under ``chain_method="vectorized"`` it receives tensors with a
        leading chain dimension and returns one value per chain; it must be differentiable.
    :param step_size: initial :math:`h` (default 0.1; dual averaging moves it quickly).
    :param trajectory_length: initial :math:`T` (default :math:`h`).
    :param target_accept: target of the chains' harmonic-mean acceptance probability.
    :param mass_matrix: ``"dense"``, ``"diag"`` or ``"identity"`` inverse mass matrix.
    :param max_num_steps: the most leapfrog steps of one iteration.
    :param adapt_step_size: dual averaging of :math:`h` during warm-up.
    :param adapt_trajectory: ChEES adaptation of :math:`T` during warm-up.
    :param init_strategy: per-site initialization (Pyro's ``init_to_*``).
    :param transforms: site -> transform to unconstrained space (default: as NUTS).
    :param max_plate_nesting: the model's plate nesting (default: found by tracing).
    :param inverse_mass_matrix: the starting :math:`M^{-1}` (default: the identity) over
        the flattened unconstrained coordinates, sites in sorted name order, ``(D,)``
        diagonal or ``(D, D)`` dense (e.g. the inverse Hessian at the MAP point); warm-up
        adapts it further unless ``mass_matrix="identity"`` (then it is an error).
    """

    def __init__(self, model=None, potential_fn=None, *, step_size: float = 0.1,
                 trajectory_length: float | None = None, target_accept: float = 0.651,
                 mass_matrix: str = "dense", max_num_steps: int = 1000,
                 adapt_step_size: bool = True, adapt_trajectory: bool = True,
                 init_strategy=init_to_uniform, transforms: dict | None = None,
                 max_plate_nesting: int | None = None,
                 inverse_mass_matrix: torch.Tensor | None = None):
        if (model is None) == (potential_fn is None):
            raise ValueError("ChEESHMC: pass exactly one of model and potential_fn")
        self._options = dict(step_size=step_size, trajectory_length=trajectory_length,
                             target_accept=target_accept, mass_matrix=mass_matrix,
                             max_num_steps=max_num_steps, adapt_step_size=adapt_step_size,
                             adapt_trajectory=adapt_trajectory)
        ChEESAdapter(1, 0, **self._options)  # checks every setting (ValueError naming it)
        self.model, self.potential_fn = model, potential_fn
        self.init_strategy = init_strategy
        self.inverse_mass_matrix = inverse_mass_matrix
        self.transforms = self._user_transforms = transforms
        self.max_plate_nesting = max_plate_nesting
        self._t = 0
        super().__init__()

    # -- Pyro's kernel API: one chain ------------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        """Prepare one chain (called by :class:`pyro.infer.MCMC`)."""
        self._vectorized = False
        if self.model is not None:
            init, potential, transforms, _ = initialize_model(
                self.model, model_args=args, model_kwargs=kwargs,
                transforms=self._user_transforms, max_plate_nesting=self.max_plate_nesting,
                init_strategy=self.init_strategy, initial_params=self._user_init)
            self.transforms = transforms
            init = {k: v.detach() for k, v in init.items()}
        else:
            init, potential = self._user_start(self._user_init)
        self._initial_params = init

        def batched(params):
            return potential({k: v[0] for k, v in params.items()}).reshape(1)

        self._single = batched
        self._start({k: v.unsqueeze(0) for k, v in init.items()}, batched, warmup_steps)

    # -- vectorized chains ---------------------------------------------------------------------
    def setup_chains(self, num_chains: int, warmup_steps: int, args: tuple = (),
                     kwargs: dict | None = None, initial_params: dict | None = None):
        """Prepare ``num_chains`` chains advancing as one batch (used by
        :class:`pyro_dgm.inference.MCMC`); ``initial_params`` have a leading chain dim.

        :raises NotVectorizable: the model does not broadcast over chains or has discrete
            latent sites.
        """
        self._vectorized = True
        if initial_params is None:  # set on the kernel (``kernel.initial_params = ...``)
            initial_params = self._user_init
        self._single = None
        if self.potential_fn is not None:
            init, potential = self._user_start(initial_params)
        else:
            cm = self._continuous_chain_model(
                args, kwargs, num_chains, "HMC needs continuous latent sites (use Gibbs, or "
                "NUTS to sum it out)")
            potential = self._chain_potential(cm, grad=True)
            init = self._chain_init(cm, potential, initial_params)
            try:  # one chain at a time, for chains whose model raises (none if data per chain)
                single = ChainModel(self.model, args, kwargs or {}, 1,
                                    max_plate_nesting=self.max_plate_nesting)
                for name, site in single.sites.items():
                    site.to_constrained = cm.sites[name].to_constrained
                self._single = self._chain_potential(single, grad=True)
            except (NotVectorizable, RuntimeError, ValueError):
                pass
        self._initial_params = init
        self._start(init, potential, warmup_steps)

    # -- the sampler proper (a batch of C >= 1 chains) -------------------------------------
    def _start(self, params: dict, potential, warmup_steps: int) -> None:
        self._set_layout(params)
        if not self._names:
            raise ValueError("model: ChEESHMC needs at least one continuous latent site")
        self._potential = potential
        self._warmup_steps = warmup_steps
        z = self._flatten(params)
        self.adapter = ChEESAdapter(z.shape[-1], warmup_steps, **self._options)
        self._state = self.adapter.init(self._num_chains, dtype=z.dtype, device=z.device,
                                        inverse_mass_matrix=self.inverse_mass_matrix)
        self._lagged = LaggedScalar(self.adapter.trajectory_length / self.adapter.step_size,
                               z.device)
        self._ratio = None  # T / h on the host after warm-up
        self._step_size = self.adapter.step_size_of(self._state)
        self._scale = self._state.scale
        self._chain = self._score(z)
        self._t = 0
        self._records: list = []
        self._accept_sum = torch.zeros((), dtype=z.dtype, device=z.device)
        self._last = None
        if warmup_steps == 0:
            self._end_warmup()

    def _potential_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`U` ``(C,)`` and :math:`\\nabla U` ``(C, D)`` of every chain, one batched pass.

        Where the model raises a linear-algebra error (a Cholesky factorization failing far
        out in a trajectory), the chains are evaluated one by one and the failing ones get
        :math:`U = \\mathrm{NaN}` (a rejected, divergent transition), as Pyro's HMC does."""
        try:
            return _value_and_grad(self._potential, self._unflatten, z)
        except RuntimeError as e:
            if not _linalg_failure(e) or self._single is None:
                raise
        out = []
        for c in range(z.shape[0]):
            try:
                out.append(_value_and_grad(self._single, self._unflatten, z[c:c + 1]))
            except RuntimeError as e:
                if not _linalg_failure(e):
                    raise
                out.append((z.new_full((1,), float("nan")), torch.zeros_like(z[c:c + 1])))
        return torch.cat([e for e, _ in out]), torch.cat([g for _, g in out])

    def _score(self, z: torch.Tensor) -> MHState:
        """The chain state: position, potential (as ``(C, 1)``) and gradient."""
        energy, grad = self._potential_and_grad(z)
        return MHState((z, energy.unsqueeze(-1), grad), -energy)

    def _mul(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """:math:`Lx` (or :math:`L^\\top x`) for ``x`` of shape ``(C, D)``."""
        if not self.adapter.dense:
            return x * self._scale
        return x @ (self._scale if transpose else self._scale.mT)

    @torch.no_grad()
    def _step(self) -> None:
        warmup = self._t < self._warmup_steps
        ratio = self._lagged.read() if warmup else self._ratio
        n = self.adapter.num_steps(self._t, ratio)
        h = self._step_size
        z0, u0, g0 = self._chain.position
        r = torch.randn_like(z0)
        h0 = u0.squeeze(-1) + 0.5 * (r * r).sum(-1)
        z, u, g = z0, u0, g0
        r = r - 0.5 * h * self._mul(g, transpose=True)
        for i in range(n):
            z = z + h * self._mul(r)
            energy, g = self._potential_and_grad(z)
            r = r - (h if i < n - 1 else 0.5 * h) * self._mul(g, transpose=True)
        u = energy.unsqueeze(-1)
        h1 = energy + 0.5 * (r * r).sum(-1)
        diverging = ~(h1 - h0 <= MAX_DELTA_ENERGY)
        chain, info = mh_step(MHState((z0, u0, g0), -h0), (z, u, g), -h1, event_dim=1)
        self._chain = MHState(chain.position, -chain.position[1].squeeze(-1))
        if warmup:
            self._state = self.adapter.update(self._state, self._t, ChEESInfo(
                z0, z, self._mul(r), info.accept_prob, diverging, chain.position[0],
                n * h))
            self._step_size = self.adapter.step_size_of(self._state)
            self._scale = self._state.scale
            self._lagged.push(self.adapter.ratio(self._state))
            self._accept_sum += info.accept_prob.mean()
        else:
            self._accept_sum += info.accept_prob.mean()
            self._records.append((info.accept_prob, torch.where(info.accepted, h1, h0),
                                  diverging, n))
        self._t += 1
        if self._t == self._warmup_steps:
            self._end_warmup()

    def _end_warmup(self) -> None:
        """Fix the kernel: averaged step size, trajectory length; one host read."""
        self._step_size = self.adapter.step_size_of(self._state, final=True)
        self._scale = self._state.scale
        self._ratio = float(self.adapter.ratio(self._state, final=True))
        self._accept_sum = torch.zeros_like(self._accept_sum)  # from now on: sampling only

    def sample(self, params):
        """One HMC iteration from ``params`` (batched under vectorized chains)."""
        if params is not self._last:  # moved by someone else: re-score
            batched = params if self._vectorized else {k: v.unsqueeze(0)
                                                       for k, v in params.items()}
            self._chain = self._score(self._flatten(batched))
        self._step()
        out = self._unflatten(self._chain.position[0])
        if not self._vectorized:
            out = {k: v[0] for k, v in out.items()}
        self._last = out
        return out

    # -- diagnostics --------------------------------------------------------------------------
    @property
    def step_size(self) -> float:
        """The current step size :math:`h` (a host read)."""
        return float(getattr(self, "_step_size", self._options["step_size"]))

    @property
    def trajectory_length(self) -> float:
        """The current trajectory length :math:`T` (a host read)."""
        return float(self.adapter.length_of(self._state, final=self._t >= self._warmup_steps))

    def logging(self):
        done = self._t if self._t < self._warmup_steps else self._t - self._warmup_steps
        rate = float(self._accept_sum) / max(done, 1)  # running sums: O(1) per call
        return OrderedDict([("step size", f"{self.step_size:.2e}"),
                            ("traj. length", f"{self.trajectory_length:.2e}"),
                            ("acc. prob", f"{rate:.3f}")])

    def chain_diagnostics(self) -> list[dict]:
        """Per chain: per-draw ``accept_prob``, ``step_size``, ``num_steps``, ``energy``,
        the draws that diverged (``divergences``) and the ``acceptance rate``."""
        C = self._num_chains
        if not self._records:
            return [{"divergences": [], "acceptance rate": float("nan")} for _ in range(C)]
        accept = torch.stack([r[0] for r in self._records], 1).cpu().double()
        energy = torch.stack([r[1] for r in self._records], 1).cpu().double()
        diverging = torch.stack([r[2] for r in self._records], 1).cpu()
        steps = torch.tensor([float(r[3]) for r in self._records], dtype=torch.float64)
        step = torch.full_like(steps, self.step_size)
        return [{"divergences": torch.nonzero(diverging[c]).reshape(-1).tolist(),
                 "acceptance rate": float(accept[c].mean()), "accept_prob": accept[c],
                 "step_size": step, "num_steps": steps, "energy": energy[c]}
                for c in range(C)]


def _linalg_failure(error: RuntimeError) -> bool:
    text = str(error)
    return "positive-definite" in text or "singular" in text


def _value_and_grad(potential, unflatten, z: torch.Tensor):
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        energy = potential(unflatten(z))
        (grad,) = torch.autograd.grad(energy.sum(), z)
    return energy.detach(), grad
