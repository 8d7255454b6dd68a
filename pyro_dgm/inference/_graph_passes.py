r"""Clean-up passes over a captured step graph (:mod:`pyro_dgm.inference._capture`), so that
running it eagerly costs little more than the arithmetic.

A graph traced through Pyro holds much that an eager step hides in C++ or never does:
``detach`` and ``alias`` nodes, ``expand``/``view`` to the shape a tensor already has, the
same transpose of a weight taken in the forward and again in the backward, constants
rebuilt every call (``zeros`` of a prior's location, ``log`` of a fixed scale). Each costs a
Python-level dispatch per step in an eager graph run. :func:`simplify` removes them:

1. **no-ops**: ``detach``/``alias``, and a view (``expand``, ``view``, ``t`` ...) whose
   result has the layout (shape, strides, offset) of its input or of a tensor further up
   its chain of views (``t(t(w))``), are replaced by that tensor;
2. **common subexpressions**: pure ops with the same target and arguments are computed
   once;
3. **constant folding**: pure, non-random ops whose inputs are all constants are computed
   once, at capture time, and stored on the graph (never one whose result is mutated in
   place or returned, since gradients handed out must be fresh tensors);
(2-3 only where every in-place op writes into memory the graph made for it, e.g.
``normal_`` of an ``empty`` or ``copy_`` into a slice of a ``new_zeros``; a node whose
memory is written, or that reads such memory, is never merged or precomputed);
4. dead code is dropped, keeping every random draw (it advances the generator).

None of this changes a value: the ops that remain are the same ops on the same inputs, in
the same order, so the eager graph stays bit-identical to the ordinary step.

Example::

    >>> graph = simplify(make_fx(step)(*inputs))
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

__all__ = ["is_random_or_mutating", "simplify"]

aten = torch.ops.aten
_IDENTITY = {aten.detach.default, aten.alias.default}
_SHAPE_OPS = {aten.expand.default, aten.view.default, aten.reshape.default,
              aten._unsafe_view.default}


def is_random_or_mutating(node: Node) -> bool:
    """Whether dropping, merging or precomputing ``node`` could change the result."""
    target = node.target
    if node.op != "call_function":
        return node.op in ("placeholder", "output")
    if isinstance(target, torch._ops.OpOverload):
        return torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable
    return node.is_impure()


def _is_view(node: Node) -> bool:
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    returns = target._schema.returns
    return bool(returns) and returns[0].alias_info is not None and not target._schema.is_mutable


def _root(node):
    while isinstance(node, Node) and _is_view(node) and node.args:
        node = node.args[0]
    return node


def _written(graph):
    """The nodes whose memory some in-place op writes (through any chain of views), or
    ``None`` when an in-place op writes into an input or a constant."""
    roots = set()
    for node in graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) \
                and target._schema.is_mutable and node.args:
            root = _root(node.args[0])
            if not isinstance(root, Node) or root.op != "call_function":
                return None
            roots.add(root)
    return {n for n in graph.nodes if _root(n) in roots}


def _val(node):
    return node.meta.get("val") if isinstance(node, Node) else None


def _same_layout(a, b) -> bool:
    return (torch.is_tensor(a) and torch.is_tensor(b) and tuple(a.shape) == tuple(b.shape)
            and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()
            and a.dtype == b.dtype)


def _drop_no_ops(graph) -> None:
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _IDENTITY:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        if not (_is_view(node) or node.target in _SHAPE_OPS):
            continue
        # a chain of views that ends where it began (t(t(w)), an expand to the same shape)
        ancestor = node.args[0]
        while isinstance(ancestor, Node):
            if _same_layout(_val(ancestor), _val(node)):
                node.replace_all_uses_with(ancestor)
                graph.erase_node(node)
                break
            if not _is_view(ancestor):
                break
            ancestor = ancestor.args[0]


def _key(value):
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, Node):
        return ("node", value.name)
    if isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device,
                          torch.layout, torch.memory_format)):
        return (type(value), value)
    return ("id", id(value))


def _touches(node: Node, written: set) -> bool:
    return node in written or any(a in written for a in node.all_input_nodes)


def _common_subexpressions(graph, written: set) -> None:
    seen: dict = {}
    for node in list(graph.nodes):
        if node.op != "call_function" or is_random_or_mutating(node) or \
                _touches(node, written):
            continue
        key = (node.target, _key(node.args), _key(node.kwargs))
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph.erase_node(node)
        else:
            seen[key] = node


def _args_constant(value, constant) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_args_constant(v, constant) for v in value)
    if isinstance(value, dict):
        return all(_args_constant(v, constant) for v in value.values())
    return not isinstance(value, Node) or value in constant


def _fold_constants(gm: GraphModule, written: set) -> None:
    graph = gm.graph
    constant: dict[Node, object] = {}
    outputs = {a for n in graph.nodes if n.op == "output" for a in _flat(n.args)}
    for node in graph.nodes:
        if node.op == "get_attr":
            constant[node] = getattr(gm, node.target)
        elif (node.op == "call_function" and not is_random_or_mutating(node)
              and not _touches(node, written) and _args_constant(node.args, constant)
              and _args_constant(node.kwargs, constant)):
            args = torch.fx.node.map_arg(node.args, lambda n: constant[n])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: constant[n])
            with torch.no_grad():
                constant[node] = node.target(*args, **kwargs)
    count = 0
    for node, value in constant.items():
        if node.op == "get_attr" or not torch.is_tensor(value) or node in outputs:
            continue
        name = f"_folded_{count}"
        count += 1
        gm.register_buffer(name, value, persistent=False)
        with graph.inserting_before(node):
            attr = graph.get_attr(name)
        attr.meta = dict(node.meta)
        node.replace_all_uses_with(attr)


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        elif isinstance(a, Node):
            yield a


def simplify(gm: GraphModule) -> GraphModule:
    """Apply the passes of the module docstring to ``gm`` in place and return it."""
    graph = gm.graph
    _drop_no_ops(graph)  # a same-layout view or detach aliases its input anyway
    written = _written(graph)
    if written is not None:
        _common_subexpressions(graph, written)
        _fold_constants(gm, written)
    graph.eliminate_dead_code(is_impure_node=is_random_or_mutating)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
