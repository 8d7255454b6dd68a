r"""Compiled batched potentials for the vectorized MCMC kernels.

A vectorized kernel (:class:`~pyro_dgm.inference.VectorizedKernel`) evaluates the potential
energy of every chain at once,

.. math::

    U(u_{1..C}) = \big(-\log p(T(u_c), x) - \log|\det J_T(u_c)|\big)_{c=1..C},

by running the model under a chain plate (:mod:`~pyro_dgm.inference.chain_model`): Pyro's
handlers on every call, thousands of times per run. :class:`CompiledPotential` captures one
call per signature (site names, shapes, dtypes, device) with ``make_fx``
(:func:`~pyro_dgm.inference._capture.trace_graph`) into a graph of the unconstrained values
and replays it; when the values require grad (gradient-based kernels) the graph also holds
:math:`\nabla U` and the energy reaches the values through one autograd node whose backward
scales each chain's gradient by its incoming weight (chains are independent: chain
:math:`c`'s energy depends on chain :math:`c`'s values only, which
:class:`~pyro_dgm.inference.ChainModel` checks by value at set-up).

Set ``kernel.compile_potential = True`` (a :class:`VectorizedKernel` option, off by default)
before the run. A potential that cannot be traced (data-dependent Python control flow, an
op ``make_fx`` cannot follow) runs uncompiled after one
:class:`~pyro_dgm.inference.CompileFallbackWarning`.

Example::

    >>> kernel = RandomWalkMH(model)
    >>> kernel.compile_potential = True
    >>> MCMC(kernel, 1000, 1000, num_chains=64, chain_method="vectorized").run(x, y)
"""

from __future__ import annotations

import time
import warnings

import torch

from pyro_dgm.inference._capture import CaptureError, trace_graph
from pyro_dgm.inference._graph_passes import simplify
from pyro_dgm.inference.compiled import CompileFallbackWarning

__all__ = ["CompiledPotential"]


class _Apply(torch.autograd.Function):
    """The compiled energy as one autograd node: backward = per-chain gradient x weight."""

    @staticmethod
    def forward(ctx, box, *values):
        energy, grads = box
        ctx.grads = grads
        return energy

    @staticmethod
    def backward(ctx, weight):
        return (None, *(g * weight.reshape(weight.shape + (1,) * (g.dim() - 1))
                        for g in ctx.grads))


class CompiledPotential:
    """``potential`` (``{site: (C, *shape)} -> (C,)``) traced once per signature.

    :param potential: the kernel's batched potential.
    :ivar compile_seconds: total seconds spent tracing; ``fallback``: why it runs uncompiled
        (``None``: compiled).
    """

    def __init__(self, potential):
        self.potential = potential
        self.compile_seconds = 0.0
        self.fallback: str | None = None
        self._graphs: dict = {}

    def _build(self, names: tuple, values: list, grad: bool):
        began = time.perf_counter()
        potential = self.potential

        def fn(*inputs):
            if not grad:
                return (potential(dict(zip(names, inputs, strict=True))),)
            with torch.enable_grad():
                leaves = [v.detach().requires_grad_(True) for v in inputs]
                energy = potential(dict(zip(names, leaves, strict=True)))
                grads = torch.autograd.grad(energy.sum(), leaves, allow_unused=True)
            return (energy.detach(), *(g if g is not None else torch.zeros_like(v)
                                       for g, v in zip(grads, leaves, strict=True)))

        try:
            graph = simplify(trace_graph(fn, [v.detach() for v in values]))
        except CaptureError as e:
            self.fallback = str(e)
            warnings.warn(f"compiled potential: {e}; running the ordinary potential from now "
                          "on", CompileFallbackWarning, stacklevel=4)
            return None
        finally:
            self.compile_seconds += time.perf_counter() - began
        return graph

    def __call__(self, params: dict) -> torch.Tensor:
        if self.fallback is not None:
            return self.potential(params)
        names = tuple(params)
        values = [params[k] for k in names]
        grad = torch.is_grad_enabled() and any(v.requires_grad for v in values)
        key = (names, grad, tuple((tuple(v.shape), v.dtype, v.device) for v in values))
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = self._build(names, values, grad)
            if graph is None:
                return self.potential(params)
        with torch.no_grad():
            energy, *grads = graph(*(v.detach() for v in values))
        if not grad:
            return energy
        return _Apply.apply((energy, grads), *values)

