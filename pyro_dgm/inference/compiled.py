r"""Compiled SVI steps: any Pyro objective, traced once per input signature into a graph of
(parameters, data) -> (loss, gradients) with Pyro's per-step Python gone.

:func:`compile_loss` wraps an objective (``Trace_ELBO``, ``TraceMeanField_ELBO``,
:class:`~pyro_dgm.inference.IWAE` with any estimator,
:class:`~pyro_dgm.inference.PerturbativeELBO`, ...) in a :class:`CompiledELBO`, itself a
:class:`pyro.infer.ELBO` with the same three entry points, so it drops into ``SVI``, into
``objective(model, guide)`` (an ``nn.Module`` for plain PyTorch loops, Lightning or DDP) and
into :func:`pyro_dgm.dlgm.train`:

.. math::

    (\theta, x) \;\mapsto\; \big(\hat{\mathcal L}(\theta, x, \epsilon),\;
    \nabla_\theta \hat{\mathcal L}(\theta, x, \epsilon)\big),

one graph per *signature* (model, guide, argument shapes/dtypes/devices, the objective's
settings), captured by :mod:`pyro_dgm.inference._capture` with ``make_fx``. The noise
:math:`\epsilon` is drawn inside the graph by the same ATen random ops, in the same order,
from torch's global generator, so a compiled step draws **exactly** what the ordinary step
draws from the same generator state, and gives the same loss and gradient (bit-for-bit with
``backend="fx"``; with ``"inductor"`` up to floating-point reassociation, random ops kept
on the ATen generator via ``fallback_random``).

**Guards.**

- *Signature* (every call): a new argument signature, objective setting, or a parameter or
  buffer of the model/guide modules replaced by another tensor -> trace again.
- *Structure* (every ``check_every`` steps): a fresh ordinary run with the generator state
  saved and restored (so it draws nothing); if its sites (names, distributions, shapes,
  plates) differ from the traced ones, Python control flow the graph cannot see is at work
  -> fall back.
- *Host reads* while tracing (``bool(tensor)``, ``.item()`` on data, parameters or draws:
  data-dependent control flow) and ops ``make_fx`` cannot trace -> fall back.

A fallback runs the wrapped objective unchanged and warns once per (model, guide) with
:class:`CompileFallbackWarning`, saying why. With Pyro validation on, a non-finite compiled
loss re-runs the ordinary step from the same generator state, so its error message is the
objective's own; without validation nothing is read on the host (``Trace_ELBO``'s NaN
warning is dropped).

**Backends.** ``"fx"``: the captured graph run eagerly (no per-site Python, no autograd
graph; no compile cost). ``"inductor"``: ``torch.compile`` of the graph (C++/Triton
kernels; CUDA graphs on a GPU); a first-call cost of
seconds. ``"auto"``: ``"inductor"`` on CUDA, ``"fx"`` on CPU (see ``docs/performance.md``).
:attr:`CompiledELBO.compile_seconds` holds the time spent tracing and compiling.

Limits: gradients only with respect to the parameters (not the data); one backward per
loss (no ``create_graph``); no enumeration of discrete sites (``TraceEnum_ELBO`` falls
back). DDP: ``DDP(compiled(model, guide))`` works as with the ordinary objective (the
gradient reaches the parameters through one autograd node, where DDP's hooks sit).

Example::

    >>> elbo = compile_loss(IWAE(num_particles=5, max_plate_nesting=1))
    >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    >>> svi.step(x)                               # first call traces, later calls run the graph
    >>> module = elbo(model, guide)               # nn.Module: module(x).backward()
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import pyro
import torch
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled

from pyro_dgm._validation import check_choice, check_int
from pyro_dgm.inference._capture import (
    Captured,
    CaptureError,
    capture,
    discover,
    module_state,
    rng_state,
    same_state,
    set_rng_state,
    signature,
)

__all__ = ["BACKENDS", "CompileFallbackWarning", "CompiledELBO", "compile_loss"]

BACKENDS = ("auto", "fx", "inductor")


class CompileFallbackWarning(UserWarning):
    """A compiled objective runs the ordinary Pyro step for a (model, guide); says why."""


@dataclass
class _Entry:
    captured: Captured
    run: object             # (leaves, data) -> (loss, grads)
    sites: tuple
    param_names: tuple
    state: tuple            # module tensors the graph was traced with
    calls: int = 0
    cuda_graphs: bool = False  # outputs live in CUDA-graph memory: copy them out


class _Apply(torch.autograd.Function):
    """The compiled loss as one autograd node whose backward hands out the precomputed
    gradients (times the incoming gradient)."""

    @staticmethod
    def forward(ctx, box, *leaves):
        loss, grads = box
        ctx.grads = grads
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("a compiled loss can be backpropagated once")
        return (None, *(g * grad_output for g in grads))


def _config(loss) -> tuple:
    return tuple(sorted((k, v) for k, v in vars(loss).items()
                        if isinstance(v, (bool, int, float, str, type(None)))))


def _cuda_device(tree):
    """The CUDA device of the first CUDA tensor in ``tree`` (``None``: all on the CPU)."""
    from torch.utils import _pytree as pytree

    return next((x.device for x in pytree.tree_leaves(tree)
                 if torch.is_tensor(x) and x.device.type == "cuda"), None)


class CompiledELBO(ELBO):
    """``loss`` with compiled steps (see the module docstring); build it with
    :func:`compile_loss`.

    :ivar compile_seconds: total seconds spent tracing and compiling (all signatures).
    :ivar num_traces: graphs captured so far; ``fallbacks``: (model, guide) ids -> reason.
    """

    def __init__(self, loss: ELBO, backend: str = "auto", check_every: int = 1000):
        if not isinstance(loss, ELBO):
            raise ValueError(f"loss: expected a pyro.infer.ELBO, got {type(loss).__name__}")
        if isinstance(loss, CompiledELBO):
            raise ValueError("loss: already compiled")
        super().__init__(num_particles=loss.num_particles,
                         max_plate_nesting=loss.max_plate_nesting,
                         vectorize_particles=loss.vectorize_particles)
        self.loss_fn = loss
        self.backend = check_choice("backend", backend, BACKENDS)
        self.check_every = check_int("check_every", check_every, minimum=0)
        self.compile_seconds = 0.0
        self.num_traces = 0
        self.fallbacks: dict[tuple, str] = {}
        self._entries: dict[tuple, _Entry] = {}

    def __repr__(self) -> str:
        return f"compile_loss({self.loss_fn!r}, backend={self.backend!r})"

    # -- guards and capture ----------------------------------------------------------------
    def _key(self, model, guide, args, kwargs) -> tuple:
        return (id(model), id(guide), signature(args, kwargs), _config(self.loss_fn),
                bool(pyro.settings.get("module_local_params")))

    def _fall_back(self, model, guide, reason: str) -> None:
        self.fallbacks[(id(model), id(guide))] = reason
        warnings.warn(f"compile_loss({type(self.loss_fn).__name__}): {reason}; running the "
                      "ordinary Pyro step from now on", CompileFallbackWarning, stacklevel=4)

    def _structure_changed(self, entry: _Entry, model, guide, args, kwargs, device) -> str:
        state = rng_state(device)
        try:
            sites, leaves, _, _ = discover(self.loss_fn, model, guide, args, kwargs)
        finally:
            set_rng_state(state, device)
        if sites != entry.sites:
            new = [s[1] for s in sites if s not in entry.sites]
            gone = [s[1] for s in entry.sites if s not in sites]
            return (f"the sites changed between runs (control flow the graph cannot see): "
                    f"new or changed {new}, missing or changed {gone}")
        known = {id(t) for t in entry.captured.leaves}
        if any(id(t) not in known for t in leaves):
            return "new parameters appeared after tracing"
        return ""

    def _backend(self, device) -> str:
        if self.backend == "auto":
            return "inductor" if device is not None else "fx"
        return self.backend

    def _build(self, model, guide, args, kwargs) -> _Entry | None:
        began = time.perf_counter()
        store_size = len(pyro.get_param_store())
        before = module_state(model, guide)
        device = _cuda_device((args, kwargs, [t for _, _, t in before]))
        state = rng_state(device)
        sites, leaves, names, created = discover(self.loss_fn, model, guide, args, kwargs,
                                                 snapshot=lambda: rng_state(device))
        if created is not None:  # parameters were initialized (drawing, as the ordinary
            state = created      # step does): the step's draws start after that
        elif len(pyro.get_param_store()) != store_size or \
                len(module_state(model, guide)) != len(before) or not same_state(before):
            state = rng_state(device)  # created without a param site: cannot tell, carry on
        set_rng_state(state, device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the discovery run has said it already
                captured = capture(self.loss_fn, model, guide, args, kwargs, leaves)
        except CaptureError as e:
            self._fall_back(model, guide, str(e))
            return None
        finally:
            set_rng_state(state, device)
        if created is not None:  # a creating run also records the creation's param sites:
            sites = discover(self.loss_fn, model, guide, args, kwargs)[0]  # guard the steady
            set_rng_state(state, device)                                        # structure
        run = captured.graph
        inductor = self._backend(device) == "inductor"
        if inductor:
            run = self._inductor(captured, args, kwargs, device)
        self.compile_seconds += time.perf_counter() - began
        self.num_traces += 1
        return _Entry(captured, run, sites, names, module_state(model, guide),
                      cuda_graphs=inductor and device is not None)

    def _inductor(self, captured: Captured, args, kwargs, device):
        options = {"fallback_random": True}  # draws stay on torch's generator
        if device is not None:
            options["triton.cudagraphs"] = True  # what mode="reduce-overhead" sets
        compiled = torch.compile(captured.graph, dynamic=False, fullgraph=True,
                                 options=options)
        state = rng_state(device)
        with torch.no_grad():
            if device is not None:
                torch.compiler.cudagraph_mark_step_begin()
            compiled(*captured.leaves, *captured.data(args, kwargs))  # compile now
        set_rng_state(state, device)
        return compiled

    def _step(self, model, guide, args, kwargs):
        """``(loss, grads, entry)`` of a compiled step, or ``None``: run the ordinary one."""
        if (id(model), id(guide)) in self.fallbacks:
            return None
        key = self._key(model, guide, args, kwargs)
        entry = self._entries.get(key)
        if entry is not None and not same_state(entry.state):
            entry = None
        captured = entry.captured if entry is not None else None
        if entry is not None and self.check_every and entry.calls and \
                entry.calls % self.check_every == 0:
            device = _cuda_device(captured.leaves)
            reason = self._structure_changed(entry, model, guide, args, kwargs, device)
            if reason:
                self._fall_back(model, guide, reason)
                return None
        if entry is None:
            entry = self._build(model, guide, args, kwargs)
            if entry is None:
                return None
            self._entries[self._key(model, guide, args, kwargs)] = entry
            captured = entry.captured
        entry.calls += 1
        data = captured.data(args, kwargs)
        check = is_validation_enabled()
        if check:
            device = _cuda_device(captured.leaves)
            state = rng_state(device)
        with torch.no_grad():
            if entry.cuda_graphs:  # the next replay overwrites this one's outputs
                torch.compiler.cudagraph_mark_step_begin()
                loss, *grads = (t.clone() for t in entry.run(*captured.leaves, *data))
            else:
                loss, *grads = entry.run(*captured.leaves, *data)
        if check and not bool(torch.isfinite(loss)):
            set_rng_state(state, device)  # the ordinary step from the same state says what broke
            return None
        return loss, grads, entry

    # -- ELBO interface --------------------------------------------------------------------
    def _get_trace(self, model, guide, args, kwargs):
        return self.loss_fn._get_trace(model, guide, args, kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The wrapped objective's ``loss`` (no gradients: nothing to compile)."""
        return self.loss_fn.loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss as a tensor whose ``backward`` delivers the compiled gradient to the
        parameters (``ELBOModule.forward``). Without grad mode: the ordinary objective."""
        if not torch.is_grad_enabled():
            return self.loss_fn.differentiable_loss(model, guide, *args, **kwargs)
        out = self._step(model, guide, args, kwargs)
        if out is None:
            return self.loss_fn.differentiable_loss(model, guide, *args, **kwargs)
        loss, grads, entry = out
        leaves = entry.captured.leaves
        return _Apply.apply((loss, grads), *(leaves[i] for i in entry.captured.grad_index))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Accumulate the compiled gradient into the parameters' ``.grad`` and return the
        loss; emits the param sites ``SVI`` collects its parameters from."""
        out = self._step(model, guide, args, kwargs)
        if out is None:
            return self.loss_fn.loss_and_grads(model, guide, *args, **kwargs)
        loss, grads, entry = out
        leaves = entry.captured.leaves
        for i, g in zip(entry.captured.grad_index, grads, strict=True):
            leaf = leaves[i]
            if leaf.grad is None:
                leaf.grad = g
            else:
                leaf.grad.add_(g)
        store = pyro.get_param_store()
        for name in entry.param_names:
            if name in store:
                pyro.param(name)
        return float(loss)


def compile_loss(loss: ELBO, *, backend: str = "auto", check_every: int = 1000) -> CompiledELBO:
    """Compile ``loss``'s steps (see the module docstring).

    :param loss: a :class:`pyro.infer.ELBO` (Pyro's or this package's objectives).
    :param backend: ``"fx"``, ``"inductor"`` or ``"auto"`` (inductor on CUDA, fx on CPU).
    :param check_every: re-check the site structure every this many steps of a graph
        (``0``: never).
    :return: a :class:`CompiledELBO` with ``loss``'s interface.
    :raises ValueError: ``loss`` not an ELBO, an unknown backend, a negative ``check_every``.
    """
    return CompiledELBO(loss, backend=backend, check_every=check_every)
