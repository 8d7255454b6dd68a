r"""Capture one step of a Pyro objective as a pure graph of (parameters, data) -> (loss,
gradients), with the effect handlers gone: the tracing half of
:mod:`pyro_dgm.inference.compiled`.

**How.** :func:`capture` runs ``loss.differentiable_loss(model, guide, *args)`` and
``torch.autograd.grad`` of it under :func:`torch.fx.experimental.proxy_tensor.make_fx`
(real tensors, no fake mode). ``make_fx`` records every ATen op below autograd, so the graph
holds the forward, the backward and the random draws as ordinary ops (``normal_``,
``bernoulli`` ...) on torch's global generator: run eagerly with the same generator state
it draws exactly what Pyro would. The parameters enter as graph inputs by *identity*: the
leaf tensors are passed to ``make_fx`` as inputs, and ``make_fx`` tracks those very
objects, so the model and guide may reach them any way they like (module attributes,
the param store, closures).

**Leaves.** :func:`discover` runs the objective once the ordinary way under a light
messenger (:class:`Structure`) that records every sample and param site (name, kind,
distribution type, value shape, plates): the param sites give the param-store leaves, and
the ``nn.Module`` model and guide give their parameters and buffers. A tensor that still
requires grad but was captured as a constant (a parameter in a closure) is added to the
leaves and the step traced again.

**Host reads.** Reading a traced tensor on the host (``bool``, ``.item()``) is
data-dependent Python control flow; ``make_fx`` refuses it and :func:`capture` raises
:class:`CaptureError` with the reason, so the caller falls back to Pyro. Two host reads of
Pyro's own are harmless and are replaced while tracing (and only then): ``torch_item`` of
``Trace_ELBO``/``TraceMeanField_ELBO`` (used for the loss *value*; a detached tensor gives
the same value and gradient) and ``warn_if_nan`` (the compiled step checks finiteness
itself). Validation is off while tracing (it reads tensors on the host).

Example::

    >>> sites, leaves, names = discover(loss, model, guide, (x,), {})
    >>> step = capture(loss, model, guide, (x,), {}, leaves)
    >>> value, grads = step.graph(*leaves, *step.data(((x,), {})))
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass

import pyro
import pyro.infer.trace_elbo as _trace_elbo
import pyro.infer.trace_mean_field_elbo as _mean_field
import torch
from pyro.poutine.messenger import Messenger
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from pyro_dgm.inference._graph_passes import simplify

__all__ = ["CaptureError", "Captured", "Structure", "capture", "discover", "rng_state",
           "set_rng_state", "signature", "trace_graph"]


class CaptureError(RuntimeError):
    """The step cannot be captured as a graph; the message says why."""


class Structure(Messenger):
    """Records every sample and param site of a run: ``(kind, name, distribution, shape,
    observed, plates)`` in order, and the leaf tensor behind each param site.

    ``snapshot`` (optional) is called at every param site whose name and leaf tensor's
    ``id`` are both not in ``known`` (a parameter created by this run); its last result is
    kept as :attr:`after_creation`: the generator state after the parameters'
    initialization, from which the step's own draws follow (autoguides create every
    parameter before they sample)."""

    def __init__(self, known=(), snapshot=None):
        super().__init__()
        self.sites: list[tuple] = []
        self.params: dict[str, torch.Tensor] = {}
        self.known, self.snapshot = set(known), snapshot
        self.after_creation = None

    def _postprocess_message(self, msg) -> None:
        kind = msg["type"]
        if kind not in ("sample", "param"):
            return
        value = msg["value"]
        shape = tuple(value.shape) if torch.is_tensor(value) else None
        frames = tuple((f.name, f.size, f.dim) for f in msg["cond_indep_stack"])
        fn = type(msg["fn"]).__name__ if kind == "sample" else None
        self.sites.append((kind, msg["name"], fn, shape, bool(msg.get("is_observed")), frames))
        if kind == "param" and torch.is_tensor(value):
            unconstrained = getattr(value, "unconstrained", None)
            leaf = unconstrained() if unconstrained is not None else value
            if leaf is None or not leaf.is_leaf:
                return
            self.params[msg["name"]] = leaf
            if self.snapshot is not None and id(leaf) not in self.known and \
                    msg["name"] not in self.known:
                self.known.update((id(leaf), msg["name"]))
                self.after_creation = self.snapshot()


def _modules(model, guide) -> list[torch.nn.Module]:
    return [m for m in (model, guide) if isinstance(m, torch.nn.Module)]


def discover(loss, model, guide, args: tuple, kwargs: dict, snapshot=None):
    """Run the objective once the ordinary way (no gradients) and return ``(sites, leaves,
    param_names, after_creation)``: the site structure, the leaf tensors a compiled step
    takes as inputs (param-store leaves, then the parameters and buffers of ``nn.Module``
    model and guide, each once), the param-store names seen, and ``snapshot()`` taken after
    the last parameter this run created (``None``: it created none)."""
    known = [x for name, t in pyro.get_param_store().named_parameters() for x in (name, id(t))]
    known += [id(t) for _, _, t in module_state(model, guide)]
    recorder = Structure(known, snapshot)
    with recorder, torch.no_grad():
        loss.differentiable_loss(model, guide, *args, **kwargs)
    leaves: dict[int, torch.Tensor] = {}
    for leaf in recorder.params.values():
        leaves[id(leaf)] = leaf
    for module in _modules(model, guide):
        for tensor in (*module.parameters(), *module.buffers()):
            leaves.setdefault(id(tensor), tensor)
    return (tuple(recorder.sites), list(leaves.values()), tuple(recorder.params),
            recorder.after_creation)


def module_state(model, guide) -> tuple:
    """``(module, attribute dict, key, tensor)`` of every parameter and buffer of the
    ``nn.Module`` model and guide: :func:`same_state` checks them in a few dict lookups."""
    out = []
    for module in _modules(model, guide):
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                out.extend((store, key, t) for key, t in store.items() if t is not None)
    return tuple(out)


def same_state(state: tuple) -> bool:
    """Whether every recorded module tensor is still the one the graph was traced with."""
    return all(store.get(key) is tensor for store, key, tensor in state)


def _leaf_signature(x) -> tuple:
    if torch.is_tensor(x):
        return ("T", tuple(x.shape), x.dtype, x.device.type, x.device.index, x.requires_grad)
    if isinstance(x, (numbers.Number, str, bytes, type(None))):
        return ("V", type(x), x)
    return ("O", type(x), id(x))


def signature(args: tuple, kwargs: dict) -> tuple:
    """What a compiled graph is specific to: the pytree structure of the arguments, every
    tensor's shape, dtype, device and ``requires_grad``, and every other value."""
    flat, spec = pytree.tree_flatten((args, kwargs))
    return (str(spec), tuple(_leaf_signature(x) for x in flat))


@contextlib.contextmanager
def _tracing_shims():
    """Pyro's harmless host reads replaced for the duration of a trace (module docstring)."""
    saved = [(m, name, getattr(m, name)) for m in (_trace_elbo, _mean_field)
             for name in ("torch_item", "warn_if_nan")]
    for module in (_trace_elbo, _mean_field):
        module.torch_item = lambda x: x if isinstance(x, numbers.Number) else x.detach()
        module.warn_if_nan = lambda value, *a, **k: value
    try:
        with pyro.validation_enabled(False):
            yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


@dataclass
class Captured:
    """A traced step: ``graph(*leaves, *data tensors) -> (loss, *grads of the grad leaves)``
    (flat inputs and outputs: no pytree work per call)."""

    graph: torch.fx.GraphModule
    leaves: list            # graph inputs before the data, in order
    grad_index: list        # positions (in ``leaves``) of the leaves that get a gradient
    spec: object            # pytree spec of (args, kwargs)

    def data(self, args: tuple, kwargs: dict) -> list:
        """The tensors of ``(args, kwargs)`` in graph-input order."""
        return [x for x in pytree.tree_leaves((args, kwargs)) if torch.is_tensor(x)]


def rng_state(device) -> tuple:
    """torch's CPU generator state and, given a CUDA ``device``, that device's."""
    cuda = torch.cuda.get_rng_state(device) if device is not None else None
    return torch.get_rng_state(), cuda


def set_rng_state(state, device) -> None:
    """Restore a :func:`rng_state`."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def trace_graph(fn, inputs: list) -> torch.fx.GraphModule:
    """``make_fx(fn)(*inputs)`` with Pyro's harmless host reads replaced and validation off.

    :raises CaptureError: data-dependent control flow (naming where), or an op that cannot
        be traced.
    """
    with _tracing_shims():
        try:
            return make_fx(fn)(*inputs)
        except RuntimeError as e:
            text = str(e)
            if "data-dependent" in text or "_local_scalar_dense" in text or \
                    "tracing tensor" in text:
                raise CaptureError("data-dependent Python control flow: a tensor computed "
                                   "from data, parameters or draws was read on the host "
                                   f"(bool(), .item(), ...) at {_where(e)}") from e
            raise CaptureError(f"tracing failed: {type(e).__name__}: {text.splitlines()[0]}"
                               ) from e


def _trace_once(loss, model, guide, args, kwargs, leaves):
    flat, spec = pytree.tree_flatten((args, kwargs))
    positions = [i for i, x in enumerate(flat) if torch.is_tensor(x)]
    grad_index = [i for i, t in enumerate(leaves) if t.requires_grad]

    count = len(leaves)

    def step(*inputs):  # tracked by identity: the model and guide reach the leaves themselves
        data = inputs[count:]
        values = list(flat)
        for i, tensor in zip(positions, data, strict=True):
            values[i] = tensor
        a, k = pytree.tree_unflatten(values, spec)
        value = loss.differentiable_loss(model, guide, *a, **k)
        wrt = [leaves[i] for i in grad_index]
        grads = torch.autograd.grad(value, wrt, allow_unused=True) if wrt and \
            value.requires_grad else [None] * len(wrt)
        return (value.detach(), *(g if g is not None else torch.zeros_like(t)
                                   for g, t in zip(grads, wrt, strict=True)))

    data = [flat[i] for i in positions]
    graph = trace_graph(step, [*leaves, *data])
    return graph, grad_index, spec


def _where(error: BaseException) -> str:
    """``file:line`` of the innermost frame of ``error`` outside torch and Pyro."""
    import os
    import traceback

    skip = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, pyro))
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(skip)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "an unknown place"


def capture(loss, model, guide, args: tuple, kwargs: dict, leaves: list) -> Captured:
    """Trace one step (see the module docstring). The trace *is* a real step: it draws from
    the generator as the ordinary step would. A tensor captured as a constant that requires
    grad is added to ``leaves`` and the step traced again from the same generator state.

    :raises CaptureError: data-dependent control flow or an op ``make_fx`` cannot trace.
    """
    if any(torch.is_tensor(x) and x.requires_grad for x in pytree.tree_leaves((args, kwargs))):
        raise CaptureError("a data argument requires grad (only parameters are inputs of "
                           "the compiled gradient)")
    leaves = list(leaves)
    device = next((t.device for t in leaves if t.device.type == "cuda"), None)
    state = rng_state(device)
    for _ in range(2):
        graph, grad_index, spec = _trace_once(loss, model, guide, args, kwargs, leaves)
        known = {id(t) for t in leaves}
        constants = [getattr(graph, n.target) for n in graph.graph.nodes if n.op == "get_attr"]
        missed = [t for t in constants if torch.is_tensor(t) and t.requires_grad
                  and t.is_leaf and id(t) not in known]
        if not missed:
            break
        leaves.extend(missed)
        set_rng_state(state, device)
    else:
        raise CaptureError("tensors that require grad are reached in a way the trace cannot "
                           "follow")
    return Captured(simplify(graph), leaves, grad_index, spec)
