r"""``pyro.infer.MCMC`` with vectorized chains.

:class:`MCMC` takes Pyro's constructor arguments and offers its ``run``,
``get_samples(group_by_chain=...)``, ``summary`` and ``diagnostics``, plus
``chain_method``:

- ``"parallel"`` (default): Pyro's own behaviour (one process per chain when there are
  enough CPUs, one after another otherwise);
- ``"vectorized"``: all ``num_chains`` chains advance in one process as a batch dimension.
  The kernel evaluates the model once per step for every chain (under a chain plate, see
  :mod:`pyro_dgm.inference.chain_model`), draws are written into preallocated tensors on the
  device, and nothing is copied to the host until the run ends, so there is no host–device
  synchronization per step. Kernels with ``vectorizable = True``
  (:class:`~pyro_dgm.inference.RandomWalkMH`, :class:`~pyro_dgm.inference.Gibbs`) run this
  way; others (NUTS, HMC), and models that do not broadcast over a chain dimension, fall back
  to Pyro's behaviour with a warning.

Chains of a vectorized run share the warm-up adaptation (one covariance from the chains in
the main group of log density, one step size); after warm-up every chain is an independent
Markov chain with the same kernel. When the run ends the kernel's ``check_health()`` may warn
about bad chains (:class:`~pyro_dgm.inference.chain_health.ChainHealthWarning` from
:class:`~pyro_dgm.inference.RandomWalkMH`: stuck chains, chains in a minor mode).
Data with a leading dimension of size ``num_chains`` gives every chain its own data set.

Example::

    >>> mcmc = MCMC(RandomWalkMH(model), num_samples=1000, warmup_steps=1000, num_chains=64,
    ...             chain_method="vectorized")
    >>> mcmc.run(x, y)
    >>> mcmc.get_samples(group_by_chain=True)["beta"].shape    # (64, 1000, 11)
    >>> idata = pyro_dgm.compare.from_mcmc(mcmc)                # r_hat, ess via ArviZ
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import pyro
import pyro.infer.mcmc.api as pyro_api
import torch
from pyro import poutine
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from tqdm.auto import tqdm

from pyro_dgm._validation import check_choice, check_int
from pyro_dgm.inference.chain_model import ChainModel, NotVectorizable, describe_nonfinite
from pyro_dgm.inference.metropolis import check_finite_start

__all__ = ["CHAIN_METHODS", "MCMC", "VectorizedKernel"]

CHAIN_METHODS = ("parallel", "vectorized")


class VectorizedKernel(MCMCKernel):
    """An MCMC kernel that runs one chain under :class:`pyro.infer.MCMC` (``setup``,
    ``sample``) and also a batch of chains under :class:`MCMC` with
    ``chain_method="vectorized"``:

    - ``setup_chains(num_chains, warmup_steps, args, kwargs, initial_params)`` prepares the
      batch (``initial_params`` with a leading chain dim) and may raise
      :class:`~pyro_dgm.inference.NotVectorizable`;
    - ``initial_params`` and ``sample(params)`` then carry the chain dimension;
    - ``chain_diagnostics()`` returns one dict per chain;
    - ``check_health()`` may warn about bad chains when the run ends (default: nothing).

    ``initial_params`` set by the user (unconstrained values) are kept for every set-up.
    """

    vectorizable = True
    #: evaluate the batched potential through
    #: :class:`~pyro_dgm.inference.compiled_potential.CompiledPotential` (one captured graph
    #: per signature instead of a Pyro model run per call); set before the run
    compile_potential = False
    _initial_params = None
    _user_init = None

    @property
    def initial_params(self):
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params):
        self._user_init = params
        self._initial_params = params

    def chain_diagnostics(self) -> list[dict]:
        raise NotImplementedError

    def check_health(self, stacklevel: int = 1) -> None:
        """Warn about bad chains at the end of a vectorized run (``stacklevel`` as for
        :func:`warnings.warn`, counted from the caller); by default nothing."""

    def diagnostics(self):
        return self.chain_diagnostics()[0]

    def _continuous_chain_model(self, args: tuple, kwargs: dict, num_chains: int,
                                hint: str) -> ChainModel:
        """The :class:`ChainModel` of ``num_chains`` chains of a kernel that moves
        continuous sites in unconstrained space; sets ``self.transforms``.

        Uses the kernel's ``max_plate_nesting`` and its user ``_user_transforms`` (site ->
        transform to unconstrained space) in place of the supports' bijections.

        :param hint: what to use instead for a discrete site (ends the error message).
        :raises NotVectorizable: a discrete latent site.
        :raises ValueError: a support without a transform to unconstrained space.
        """
        cm = ChainModel(self.model, args, kwargs or {}, num_chains,
                        max_plate_nesting=self.max_plate_nesting)
        user = getattr(self, "_user_transforms", None) or {}
        for name, site in cm.sites.items():
            if site.discrete:
                raise NotVectorizable(f"site {name!r} is discrete: {hint}")
            if site.to_constrained is None:
                raise ValueError(f"site {name!r}: its support has no transform to "
                                 "unconstrained space")
            if name in user:
                site.to_constrained = user[name].inv
        self.transforms = {name: s.to_constrained.inv for name, s in cm.sites.items()}
        return cm

    def _chain_potential(self, cm: ChainModel, grad: bool = False):
        """:math:`U(u) = -\\log p(T(u), x) - \\log|\\det J_T(u)|` of every chain, ``(C,)``,
        from unconstrained ``{site: (C, *shape)}`` (one model run; ``grad``: differentiable;
        compiled with :attr:`compile_potential`)."""
        sites = cm.sites

        def potential(params: dict) -> torch.Tensor:
            values, ladj = {}, 0.0
            for name, u in params.items():
                x, j = cm.constrain(name, u)
                values[name] = x.reshape(sites[name].padded)
                ladj = ladj + j.reshape(cm.num_chains, -1).sum(-1)
            return -(cm.log_joint(values, grad=grad) + ladj)

        if self.compile_potential:
            from pyro_dgm.inference.compiled_potential import CompiledPotential

            return CompiledPotential(potential)
        return potential

    def _chain_init(self, cm: ChainModel, potential, initial_params: dict | None) -> dict:
        """Unconstrained start of every chain: ``initial_params`` (checked finite) or the
        kernel's ``init_strategy`` (:meth:`ChainModel.valid_init_values`)."""
        if initial_params is not None:
            init = {k: v.detach() for k, v in initial_params.items()}
            self._check_start(potential, init, lambda: describe_nonfinite(cm, {
                k: cm.constrain(k, v)[0].reshape(cm.sites[k].padded) for k, v in init.items()}))
            return init
        values = cm.valid_init_values(self.init_strategy, what=type(self).__name__)
        init = {k: cm.unconstrain(k, v).reshape((cm.num_chains,) + cm.sites[k].unconstrained_shape)
                for k, v in values.items()}
        self._check_start(potential, init, lambda: "the log |Jacobian| of the transforms")
        return init

    def _user_start(self, initial_params: dict | None) -> tuple[dict, object]:
        """Initial point and potential of a kernel given a ``potential_fn`` (checked finite)."""
        if initial_params is None:
            raise ValueError(f"initial_params: required when {type(self).__name__} is given a "
                             "potential_fn")
        self.transforms = self._user_transforms or {}
        init = {k: v.detach() for k, v in initial_params.items()}
        self._check_start(self.potential_fn, init, lambda: "potential_fn")
        return init, self.potential_fn

    @staticmethod
    def _check_start(potential, init: dict, where) -> None:
        """``potential(init)`` must be finite for every chain (one host sync, at set-up)."""
        with torch.no_grad():
            energy = potential(init)
        check_finite_start(energy, where)

    # -- the chains' parameters as one (C, D) tensor ---------------------------------------
    def _set_layout(self, params: dict) -> None:
        """Record the sites of ``params`` (``{site: (C, *shape)}``) in a fixed order, so a
        batch of ``C`` chains moves as one ``(C, D)`` tensor (:meth:`_flatten`,
        :meth:`_unflatten`)."""
        self._names = sorted(params)
        first = params[self._names[0]] if self._names else None
        self._num_chains = first.shape[0] if first is not None else 1
        self._shapes = [params[k].shape[1:] for k in self._names]
        self._sizes = [s.numel() for s in self._shapes]

    def _flatten(self, params: dict) -> torch.Tensor:
        """``{site: (C, *shape)}`` -> ``(C, D)``."""
        if not self._names:  # a model without latent sites
            return torch.zeros(self._num_chains, 0)
        chains = params[self._names[0]].shape[0]
        return torch.cat([params[k].reshape(chains, -1) for k in self._names], dim=-1)

    def _unflatten(self, z: torch.Tensor) -> dict:
        """``(C, D)`` -> ``{site: (C, *shape)}``."""
        out, pos = {}, 0
        for name, shape, size in zip(self._names, self._shapes, self._sizes, strict=True):
            out[name] = z[:, pos:pos + size].reshape(z.shape[:1] + shape)
            pos += size
        return out


class MCMC(pyro_api.MCMC):
    """:class:`pyro.infer.MCMC` plus ``chain_method="vectorized"``.

    :param kernel: an MCMC kernel; vectorized chains need one with ``vectorizable = True``.
    :param num_samples: draws kept per chain.
    :param warmup_steps: adaptation steps per chain (default ``num_samples``).
    :param initial_params: unconstrained initial values, leading dim ``num_chains`` (no
        leading dim when ``num_chains == 1``).
    :param num_chains: number of chains, at least 1.
    :param chain_method: ``"parallel"`` (Pyro's behaviour) or ``"vectorized"``.
    :param hook_fn: ``hook_fn(kernel, params, stage, i)`` after every step; under vectorized
        chains ``params`` carry the chain dimension.

    The other arguments are Pyro's (``mp_context``, ``disable_progbar``,
    ``disable_validation``, ``transforms``, ``save_params``).
    """

    def __init__(self, kernel, num_samples, warmup_steps=None, initial_params=None,
                 num_chains=1, hook_fn=None, mp_context=None, disable_progbar=False,
                 disable_validation=True, transforms=None, save_params=None, *,
                 chain_method="parallel"):
        num_samples = check_int("num_samples", num_samples, minimum=1)
        num_chains = check_int("num_chains", num_chains, minimum=1)
        if warmup_steps is not None:
            warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        self.chain_method = check_choice("chain_method", chain_method, CHAIN_METHODS)
        self._pyro_kwargs = dict(
            kernel=kernel, num_samples=num_samples, warmup_steps=warmup_steps,
            initial_params=initial_params, num_chains=num_chains, hook_fn=hook_fn,
            mp_context=mp_context, disable_progbar=disable_progbar,
            disable_validation=disable_validation, transforms=transforms,
            save_params=save_params)
        self.vectorized = chain_method == "vectorized"
        if self.vectorized and not getattr(kernel, "vectorizable", False):
            warnings.warn(f"chain_method='vectorized': {type(kernel).__name__} cannot advance "
                          "chains as a batch; falling back to pyro.infer.MCMC's chain handling",
                          UserWarning, stacklevel=2)
            self.vectorized = False
        if not self.vectorized:
            super().__init__(**self._pyro_kwargs)
            return
        pyro_api.AbstractMCMC.__init__(self, kernel, num_chains, transforms)
        self.num_samples = num_samples
        self.warmup_steps = num_samples if warmup_steps is None else warmup_steps
        self.disable_validation = disable_validation
        self.disable_progbar = disable_progbar
        self.hook_fn = hook_fn
        self.save_params = save_params
        if initial_params is not None:
            if num_chains == 1:
                initial_params = {k: v.unsqueeze(0) for k, v in initial_params.items()}
            self._validate_initial_params(initial_params)
        self.initial_params = initial_params
        self._samples = None
        self._args = None
        self._kwargs = None
        self._diagnostics = [None] * num_chains

    def run(self, *args, **kwargs):
        """Run the chains on ``model(*args, **kwargs)`` and keep the draws."""
        if not self.vectorized:
            return super().run(*args, **kwargs)
        try:
            with poutine.block():
                self._run_vectorized(args, kwargs)
            self.kernel.check_health(stacklevel=2)
        except NotVectorizable as e:
            warnings.warn(f"chain_method='vectorized': {e}; falling back to pyro.infer.MCMC's "
                          "chain handling", UserWarning, stacklevel=2)
            self.vectorized = False
            super().__init__(**self._pyro_kwargs)
            return super().run(*args, **kwargs)

    def _run_vectorized(self, args, kwargs):
        self._args, self._kwargs = args, kwargs
        kernel, C = self.kernel, self.num_chains
        validation = (pyro.validation_enabled(not self.disable_validation)
                      if self.disable_validation is not None else nullcontext())
        args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
        with validation:
            kernel.setup_chains(C, self.warmup_steps, args, kwargs,
                                initial_params=self.initial_params)
            params = kernel.initial_params
            names = list(self.save_params) if self.save_params is not None else sorted(params)
            buffers = {k: params[k].new_empty((self.num_samples,) + params[k].shape)
                       for k in names}
            total = self.warmup_steps + self.num_samples
            bar = tqdm(total=total, disable=self.disable_progbar, desc="Warmup", leave=False)
            tick = max(total // 100, 1)
            for i in range(total):
                params = kernel.sample(params)
                warm = i < self.warmup_steps
                if self.hook_fn is not None:
                    self.hook_fn(kernel, params, "Warmup" if warm else "Sample",
                                 i if warm else i - self.warmup_steps)
                if not warm:
                    for k in names:
                        buffers[k][i - self.warmup_steps] = params[k]
                if (i + 1) % tick == 0 or i + 1 == total:
                    bar.update((i + 1) - bar.n)
                    if i + 1 == self.warmup_steps:
                        bar.set_description("Sample")
            bar.close()
        if self.transforms is None:
            self.transforms = getattr(kernel, "transforms", None) or {}
        samples = {}
        for k, buf in buffers.items():
            z = buf.transpose(0, 1)  # (chain, draw, ...)
            if k in self.transforms:
                z = self.transforms[k].inv(z)
            samples[k] = z.contiguous()
        self._samples = samples
        self._diagnostics = kernel.chain_diagnostics()

