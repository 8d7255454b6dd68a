r"""Turn an existing PyTorch network into a Bayes-by-Backprop one.

:func:`bayesianize` deep-copies a module (``nn.Sequential`` or any nesting of submodules,
e.g. a ResNet-style block) and replaces the selected ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d`` / ``nn.Conv3d`` layers by :class:`~pyro_dgm.nn.BayesLinear` /
:class:`~pyro_dgm.nn.BayesConv1d` / ... with the same shapes, strides, padding, groups,
device and dtype. Everything else (activations, normalization, the forward code of custom
modules) is kept, because only attributes are swapped.

With ``init_from_weights=True`` the posterior means start at the network's (trained)
weights and the posterior sds at :math:`\sigma = \delta\,|w|` (MOPED, Krishnan, Subedar &
Tickoo 2020, "Specifying Weight Priors in Bayesian Deep Neural Networks with Empirical
Bayes"; :math:`\delta = 0.1` by default, floored at ``1e-8``). Otherwise the layers are
freshly initialized (see :mod:`pyro_dgm.nn.bayes_layers`).

Example::

    >>> net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
    ...                     nn.Linear(8 * 8 * 8, 10))
    >>> bnn = bayesianize(net, prior="scale_mixture", estimator="flipout",
    ...                   exclude=["0"])          # keep the first conv deterministic
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from pyro_dgm._shared import inverse_softplus
from pyro_dgm._validation import check_choice, check_positive
from pyro_dgm.nn.bayes_layers import (
    ESTIMATORS,
    BayesConv1d,
    BayesConv2d,
    BayesConv3d,
    BayesLayer,
    BayesLinear,
)
from pyro_dgm.nn.priors import make_prior

__all__ = ["REPLACEABLE", "BayesianizeReport", "bayesianize"]

#: deterministic layer type -> Bayesian counterpart (exact types: subclasses such as the
#: output projection inside ``nn.MultiheadAttention`` are not touched)
REPLACEABLE = {nn.Linear: BayesLinear, nn.Conv1d: BayesConv1d, nn.Conv2d: BayesConv2d,
               nn.Conv3d: BayesConv3d}


@dataclass
class BayesianizeReport:
    """What :func:`bayesianize` did (``report=True`` returns it, ``verbose=True`` prints it).

    :param converted: qualified names of the layers made Bayesian (``""``: the root).
    :param skipped: name -> why, for every module holding its own parameters that was
        left deterministic (a type with no Bayesian counterpart such as ``LSTM`` or
        ``Embedding``, or a layer ``include``/``exclude`` left out).
    :param prior_replaced: names of already Bayesian layers given the new prior
        (``replace_prior=True``).
    """

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    prior_replaced: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def names(items):
            return ", ".join(n or "<root>" for n in items) or "none"

        lines = [f"bayesianize: converted {len(self.converted)}: {names(self.converted)}"]
        if self.prior_replaced:
            lines.append(f"  new prior for {len(self.prior_replaced)}: "
                         f"{names(self.prior_replaced)}")
        skipped = ", ".join(f"{n or '<root>'} ({why})" for n, why in self.skipped.items())
        lines.append(f"  skipped {len(self.skipped)}: {skipped or 'none'}")
        return "\n".join(lines)


def _skipped(net: nn.Module, chosen: set[str]) -> dict[str, str]:
    """Modules with their own parameters that stay deterministic, and why."""
    inside_bayes = [n for n, m in net.named_modules() if isinstance(m, BayesLayer)]
    out = {}
    for name, m in net.named_modules():
        if name in chosen or isinstance(m, BayesLayer) or any(
                name.startswith(f"{b}.") for b in inside_bayes if b) or (
                inside_bayes and "" in inside_bayes):
            continue
        if next(m.parameters(recurse=False), None) is None:
            continue
        kind = type(m).__name__
        out[name] = (f"{kind}: left out by include/exclude" if type(m) in REPLACEABLE
                     else f"{kind}: no Bayesian counterpart")
    return out


def _selector(spec, what: str):
    """A predicate ``(name, module) -> bool`` from names/glob patterns and/or types."""
    if spec is None:
        return None, []
    items = [spec] if isinstance(spec, (str, type)) else list(spec)
    for item in items:
        if not isinstance(item, (str, type)):
            raise ValueError(f"{what} entries must be module names, glob patterns or "
                             f"types, got {item!r}")

    def matches(item, name, module):
        if isinstance(item, type):
            return isinstance(module, item)
        return fnmatch.fnmatchcase(name, item)

    return matches, items


def _bayes_layer(module: nn.Module, prior, estimator: str, init_sigma: float) -> BayesLayer:
    w = module.weight
    factory = {"device": w.device, "dtype": w.dtype}
    common = {"prior": copy.deepcopy(prior), "estimator": estimator,
              "init_sigma": init_sigma, **factory}
    if isinstance(module, nn.Linear):
        return BayesLinear(module.in_features, module.out_features, module.bias is not None,
                           **common)
    cls = REPLACEABLE[type(module)]
    return cls(module.in_channels, module.out_channels, module.kernel_size, module.stride,
               module.padding, module.dilation, module.groups, module.bias is not None,
               module.padding_mode, **common)


def bayesianize(
    module: nn.Module,
    *,
    prior="gaussian",
    estimator: str = "reparam",
    include: str | type | Iterable | None = None,
    exclude: str | type | Iterable | None = None,
    init_from_weights: bool = False,
    moped_delta: float = 0.1,
    init_sigma: float = 1e-3,
    prior_kwargs: dict | None = None,
    replace_prior: bool = False,
    report: bool = False,
    verbose: bool = False,
) -> nn.Module | tuple[nn.Module, BayesianizeReport]:
    """A copy of ``module`` with its Linear/Conv layers made Bayesian.

    :param module: any ``nn.Module`` (not modified).
    :param prior: prior name, :class:`~pyro_dgm.nn.priors.WeightPrior` or distribution;
        each new layer gets its own copy. ``prior_kwargs`` go to a named prior.
    :param estimator: ``"reparam"``, ``"local"`` or ``"flipout"``.
    :param include: replace only layers whose qualified name (as in ``named_modules``,
        e.g. ``"features.0"``) matches one of these glob patterns, or that are instances
        of these types; ``None`` selects every replaceable layer.
    :param exclude: names/patterns/types to keep deterministic (applied after ``include``).
    :param init_from_weights: MOPED: posterior means from the current weights, sds
        ``moped_delta * |w|``.
    :param init_sigma: initial posterior sd when not ``init_from_weights``.
    :param replace_prior: ``module`` already holds Bayes layers: give the selected ones a
        copy of ``prior`` (without it such a module is an error, so a second call's prior
        is never silently ignored).
    :param report: also return a :class:`BayesianizeReport` (converted and skipped layers).
    :param verbose: print that report.
    :return: the new module (``module`` itself is untouched), with ``report=True`` the pair
        ``(module, report)``.
    :raises ValueError: unknown estimator/prior; an ``include`` name/pattern that matches
        no replaceable layer; nothing to convert (the message lists what was skipped); a
        module that is already Bayesian without ``replace_prior=True``.

    Example::

        >>> net = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
        >>> bnn, done = bayesianize(net, report=True)
        >>> done.converted, done.skipped
        (['1'], {'0': 'Embedding: no Bayesian counterpart'})
    """
    check_choice("estimator", estimator, ESTIMATORS)
    moped_delta = check_positive("moped_delta", moped_delta)
    check_positive("init_sigma", init_sigma)
    prior = make_prior(prior, **(prior_kwargs or {}))
    inc, inc_items = _selector(include, "include")
    exc, exc_items = _selector(exclude, "exclude")
    net = copy.deepcopy(module)
    candidates = [(name, m) for name, m in net.named_modules() if type(m) in REPLACEABLE]
    for item in inc_items:
        if isinstance(item, str) and not any(inc(item, n, m) for n, m in candidates):
            valid = ", ".join(n or "<root>" for n, _ in candidates) or "none"
            raise ValueError(f"include: {item!r} matches no Linear/Conv layer; layers: {valid}")
    def selected(n, m):
        return ((inc is None or any(inc(i, n, m) for i in inc_items))
                and not (exc is not None and any(exc(i, n, m) for i in exc_items)))

    chosen = [(n, m) for n, m in candidates if selected(n, m)]
    bayes = [(n, m) for n, m in net.named_modules() if isinstance(m, BayesLayer)]
    if bayes and not replace_prior:
        raise ValueError(
            f"module: already Bayesian ({', '.join(n or '<root>' for n, _ in bayes)}); pass "
            "replace_prior=True to give these layers the new prior")
    done = BayesianizeReport(skipped=_skipped(net, {n for n, _ in chosen}))
    for name, layer in bayes:
        if selected(name, layer):
            layer.prior = copy.deepcopy(prior).to(layer.weight_mu.device)
            done.prior_replaced.append(name)
    if not chosen and not done.prior_replaced:
        skipped = ", ".join(f"{n or '<root>'} ({why})" for n, why in done.skipped.items())
        raise ValueError(f"module: nothing to convert: no Linear/Conv1d/2d/3d layer selected "
                         f"(skipped: {skipped or 'no layer with parameters'})")
    done.converted = [n for n, _ in chosen]
    if verbose:
        print(done)
    for name, old in chosen:
        new = _bayes_layer(old, prior, estimator, init_sigma)
        if init_from_weights:
            with torch.no_grad():
                for mu, rho, w in [(new.weight_mu, new.weight_rho, old.weight),
                                   (new.bias_mu, new.bias_rho, old.bias)]:
                    if mu is None:
                        continue
                    mu.copy_(w)
                    rho.copy_(inverse_softplus((moped_delta * w.abs()).clamp_min(1e-8)))
        new.train(old.training)
        if name == "":
            net = new
            break
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, new)
    return (net, done) if report else net
