"""Stacks of conditional flows and the menu of flow names the guides accept.

:func:`build_flows` turns a name from :data:`FLOWS` into a :class:`FlowSequence` of
``num_flows`` layers, alternating the variable order of IAF layers and the split of coupling
layers so that every coordinate is transformed. Each layer receives only the keywords its
constructor declares (:func:`layer_kwargs`): ``parity`` reaches coupling layers, ``reverse``
IAF layers, ``hidden_dims`` both, and a keyword no flow declares (a misspelling) raises
``TypeError`` instead of being ignored.

Example::

    >>> flows = build_flows("realnvp", dim=2, num_flows=8)
    >>> y, log_det = flows(torch.randn(100, 2))
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import cache

from torch import nn

from pyro_dgm._validation import check_choice, check_int
from pyro_dgm.inference.flows.base import ConditionalFlow, NotInvertibleError
from pyro_dgm.inference.flows.iaf import IAF
from pyro_dgm.inference.flows.planar import Planar
from pyro_dgm.inference.flows.radial import Radial
from pyro_dgm.inference.flows.realnvp import AffineCoupling

__all__ = ["FLOWS", "FlowSequence", "build_flows", "check_flow_args", "layer_kwargs"]

#: flow name -> class
FLOWS: dict[str, type[ConditionalFlow]] = {
    "planar": Planar,
    "radial": Radial,
    "iaf": IAF,
    "realnvp": AffineCoupling,
}


class FlowSequence(ConditionalFlow):
    """The composition ``f_K ∘ … ∘ f_1`` of conditional flows sharing one context.

    It is invertible when every member is; its log-determinant is the sum of theirs.
    """

    def __init__(self, flows: Sequence[ConditionalFlow]):
        flows = list(flows)
        if not flows:
            raise ValueError("flows: need at least one flow")
        super().__init__(flows[0].dim, flows[0].context_dim)
        self.flows = nn.ModuleList(flows)
        self.invertible = all(f.invertible for f in flows)

    def forward(self, z, context=None):
        total = 0
        for f in self.flows:
            z, log_det = f(z, context)
            total = total + log_det
        return z, total

    def inverse(self, y, context=None):
        if not self.invertible:
            bad = sorted({type(f).__name__ for f in self.flows if not f.invertible})
            raise NotInvertibleError(
                f"this flow stack contains {', '.join(bad)} flows, which have no inverse: "
                "they can only score the values they sampled themselves; use 'iaf' or "
                "'realnvp' to score arbitrary values")
        total = 0
        for f in reversed(self.flows):
            y, log_det = f.inverse(y, context)
            total = total + log_det
        return y, total


def check_flow_args(flow: str, num_flows: int) -> tuple[str, int]:
    """Validate a flow name and count (``ValueError`` naming the bad argument)."""
    if not isinstance(flow, str):
        raise ValueError(f"unknown flow {flow!r}; valid: {', '.join(FLOWS)}")
    flow = check_choice("flow", flow.lower(), FLOWS)
    return flow, check_int("num_flows", num_flows, minimum=1)


@cache
def _declared(cls: type) -> frozenset[str] | None:
    """Keyword names ``cls(...)`` declares; ``None`` if it takes ``**kwargs``."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def layer_kwargs(cls: type[ConditionalFlow], layout: dict) -> dict:
    """The entries of ``layout`` (keywords that only some flows take: ``parity``,
    ``reverse``, ``hidden_dims``) that ``cls``'s constructor declares."""
    declared = _declared(cls)
    return {k: v for k, v in layout.items() if declared is None or k in declared}


def build_flows(flow: str, dim: int, num_flows: int, *, context_dim: int = 0,
                hidden_dims: Sequence[int] | None = None, **kwargs) -> FlowSequence:
    """``num_flows`` layers of the named flow on ``dim``-vectors.

    :param flow: one of :data:`FLOWS` (``"planar"``, ``"radial"``, ``"iaf"``,
        ``"realnvp"``).
    :param hidden_dims: hidden widths of the IAF/coupling networks (default ``(64, 64)``;
        not passed to planar and radial flows, which have none).
    :param kwargs: passed to every layer's constructor as they are (e.g. ``init_scale`` of
        planar and radial flows, ``log_scale_bound`` of IAF and coupling layers).
    :raises TypeError: a keyword in ``kwargs`` that the flow does not declare.
    """
    flow, num_flows = check_flow_args(flow, num_flows)
    layout = {}
    if hidden_dims is not None:
        layout["hidden_dims"] = [check_int("hidden_dims", h, minimum=1) for h in hidden_dims]
    cls = FLOWS[flow]
    layers = [cls(dim, context_dim,
                  **layer_kwargs(cls, {**layout, "parity": k % 2, "reverse": bool(k % 2)}),
                  **kwargs)
              for k in range(num_flows)]
    return FlowSequence(layers)


