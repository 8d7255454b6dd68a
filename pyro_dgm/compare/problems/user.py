"""Your own model in ``pyro-dgm compare``: a Pyro model function in a file, with its data.

``--model PATH.py:FUNCTION --data FILE`` imports ``FUNCTION`` from the Python file ``PATH.py``
(any directory, no package needed; the file's directory is on ``sys.path`` while it is
imported, so it can import modules beside it), reads the named arrays of ``FILE``
(:func:`pyro_dgm.data.files.load_arrays`: ``.npz``, ``.json`` or ``.csv``) and calls the model
with them as keyword arguments, converted by :func:`pyro_dgm.data.arrays.to_tensors` (reals
as tensors of the run's dtype on its device, integer arrays as ``torch.long``, integer
scalars as ``int``). Without ``--data`` the function is called with no arguments.

The :class:`~pyro_dgm.compare.settings.Problem` compares every continuous latent site
(discrete ones are summed out by NUTS and have no draws to compare). Whether the model
broadcasts over a leading particle dimension (vectorized ELBO particles, vectorized MCMC
chains) is found by running it once under a two-element plate left of its own plates: if
that run fails, a site's log density lacks the particle dimension, or an element's log
joint differs from the model's log joint at that element's values alone, the methods
evaluate one particle / chain at a time.

Every mistake found before sampling is a one-line :class:`ValueError` that starts with
``model:`` or ``data:`` (the CLI shows it as ``pyro-dgm compare: --model: ...``) and names
the file, the function or the array at fault.

Example::

    >>> entry = file_model("tests/data/linreg.py:model", "tests/data/linreg.npz")
    >>> run_comparison(entry, ["nuts", "meanfield"], settings=default_settings(quick=True))

    pyro-dgm compare --model tests/data/linreg.py:model --data tests/data/linreg.npz --quick
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample

from pyro_dgm.compare.export import from_guide
from pyro_dgm.compare.registry import MODELS, ModelEntry
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.data.arrays import to_tensors
from pyro_dgm.data.files import load_arrays
from pyro_dgm.inference.iwae import importance_resample
from pyro_dgm.inference.model_info import data_like, model_info, point_strategy

__all__ = ["RESERVED_NAMES", "file_model", "is_file_model", "load_model_function",
           "model_entry"]

#: names the methods pass beside the model's keyword data (``from_guide(model, guide, *args,
#: num_samples=..., **data)``, likewise ``importance_resample``): no data array may take one
RESERVED_NAMES = frozenset(
    p.name for f in (from_guide, importance_resample)
    for p in inspect.signature(f).parameters.values()
    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def is_file_model(spec: str) -> bool:
    """True for ``"PATH.py:FUNCTION"`` (and for a bare ``"PATH.py"``, which is an error)."""
    head = spec.rsplit(":", 1)[0] if ":" in spec else spec
    return head.endswith(".py")


def model_entry(model: str, data: str | os.PathLike | None = None) -> ModelEntry:
    """The comparison model ``model`` names: a file model (:func:`file_model`) for
    ``"PATH.py:FUNCTION"``, else the registered model of that name.

    :raises ValueError: ``data:`` when ``data`` is given with a registered model (it has
        its own data), or any error of :func:`file_model` / the registry.
    """
    if is_file_model(model):
        return file_model(model, data)
    if data is not None:
        raise ValueError(f"data: only a model from a file (PATH.py:FUNCTION) takes data; "
                         f"{model!r} is a registered model with its own data")
    return MODELS.get(model)


def load_model_function(spec: str) -> Callable:
    """Import ``FUNCTION`` from ``PATH.py`` for ``spec = "PATH.py:FUNCTION"``, as a module of
    its own (a unique name in ``sys.modules``, so draws and chains can be pickled).

    :raises ValueError: starting ``model:`` and naming the file or function: no ``:FUNCTION``,
        no such file, an import that fails, no such function, or one that is not callable.
    """
    if ":" not in spec:
        raise ValueError(f"model: {spec}: name the function too, as {spec}:FUNCTION")
    file, name = spec.rsplit(":", 1)
    path = Path(file)
    if not name.isidentifier():
        raise ValueError(f"model: {spec}: {name!r} is not a function name")
    if not path.is_file():
        raise ValueError(f"model: {file}: no such file")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_name = f"pyro_dgm_user_{resolved.stem}_{digest}"
    spec_obj = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules[module_name] = module
    sys.path.insert(0, str(resolved.parent))
    try:
        spec_obj.loader.exec_module(module)
    except Exception as e:  # the user's file: any failure is a bad --model
        del sys.modules[module_name]
        raise ValueError(f"model: {file}: importing it failed ({type(e).__name__}: "
                         f"{_first_line(e)})") from None
    finally:
        sys.path.remove(str(resolved.parent))
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items()
                         if callable(v) and getattr(v, "__module__", None) == module_name)
        raise ValueError(f"model: {file}: no function {name!r} (functions defined there: "
                         f"{', '.join(defined) or 'none'})")
    fn = getattr(module, name)
    if not callable(fn):
        raise ValueError(f"model: {file}: {name!r} is not callable (it is a "
                         f"{type(fn).__name__})")
    return fn


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _check_arguments(spec: str, fn: Callable, names: list[str], data) -> None:
    """No data name among :data:`RESERVED_NAMES`, every one a keyword parameter of ``fn``
    (unless it takes ``**kwargs``), and every parameter without a default among them."""
    taken = [n for n in names if n in RESERVED_NAMES]
    if taken:
        raise ValueError(f"data: {data}: array(s) {', '.join(map(repr, taken))} share a name "
                         "with an option the comparison passes beside the data (from_guide, "
                         "importance_resample); rename them in the file and the model")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to check (a builtin, say)
        return
    by_keyword = {p.name for p in params
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        unknown = [n for n in names if n not in by_keyword]
        if unknown:
            raise ValueError(f"data: {data}: array(s) {', '.join(map(repr, unknown))} are "
                             f"not parameters of {spec} (its parameters: "
                             f"{', '.join(p.name for p in params) or 'none'})")
    required = [p.name for p in params if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and (p.name not in names or p.kind == p.POSITIONAL_ONLY)]
    if required:
        where = f"{data} has no array" if data is not None else "no --data file gives it"
        raise ValueError(f"data: {spec} needs {', '.join(map(repr, required))} (no default) "
                         f"and {where} of that name")


def _describe(arrays: dict[str, np.ndarray]) -> str:
    def one(name, a):
        kind = {"b": "bool", "i": "int", "u": "int"}.get(a.dtype.kind, "real")
        return f"{name} {kind}" + (f"[{','.join(map(str, a.shape))}]" if a.ndim else "")

    return ", ".join(one(n, a) for n, a in arrays.items())


def file_model(spec: str, data: str | os.PathLike | None = None) -> ModelEntry:
    """A comparison model from ``spec = "PATH.py:FUNCTION"`` and an optional data file.

    The function is imported and the data read and checked against its signature now
    (errors before any sampling); :meth:`ModelEntry.build` converts the arrays to the run's
    dtype and device and traces the model once to find its latent sites.

    :param spec: ``"PATH.py:FUNCTION"``.
    :param data: ``.npz``/``.json``/``.csv`` file of named arrays, or ``None`` (the
        function is called without arguments).
    :raises ValueError: starting ``model:`` (file, import, function) or ``data:`` (file,
        format, non-numeric array, an array that is not a parameter, a required parameter
        the data lacks).
    """
    fn = load_model_function(spec)
    arrays = {}
    if data is not None:
        try:
            arrays = load_arrays(data)
        except ValueError as e:
            raise ValueError(f"data: {e}") from None
    _check_arguments(spec, fn, list(arrays), data)
    name = f"{Path(spec.rsplit(':', 1)[0]).name}:{spec.rsplit(':', 1)[1]}"
    description = f"{spec}" + (f" on {data} ({_describe(arrays)})" if data is not None
                               else " (no data)")

    def build(settings: Settings) -> Problem:
        return _problem(name, spec, fn, arrays, data, settings, description)

    return ModelEntry(name, build, description)


def _problem(name, spec, fn, arrays, data, settings: Settings, description) -> Problem:
    try:
        kwargs = to_tensors(arrays, dtype=settings.dtype, device=settings.device)
    except ValueError as e:
        raise ValueError(f"data: {data}: {e}") from None
    try:
        info = model_info(fn, (), kwargs)
    except Exception as e:  # the user's code: any failure is a bad --model or --data
        raise ValueError(f"model: {spec}: calling it with the data failed "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    discrete = _discrete_sites(fn, kwargs)
    var_names = [site for site in info.latent if site not in discrete]
    if not var_names:
        raise ValueError(f"model: {spec}: has no continuous latent sample site to infer "
                         f"(latent sites: {list(info.latent) or 'none'})")
    nesting = info.max_plate_nesting
    return Problem(name, fn, kwargs=kwargs, var_names=var_names, description=description,
                   vectorizable=_broadcasts(fn, kwargs, info.latent, nesting),
                   max_plate_nesting=nesting, jit_compile=False)


def _trace(fn, kwargs):
    """One trace of ``fn(**kwargs)`` at prior draws (points of the support for improper
    priors)."""
    init = InitMessenger(point_strategy(like=data_like((), kwargs)))
    with torch.no_grad(), poutine.block():
        return poutine.trace(init(fn)).get_trace(**kwargs)


def _discrete_sites(fn, kwargs) -> set[str]:
    trace = _trace(fn, kwargs)
    return {name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site) and site["fn"].support.is_discrete}


def _broadcasts(fn, kwargs, latent: dict, nesting: int, size: int = 2) -> bool:
    """Does ``fn`` broadcast over a ``size``-element plate left of its ``nesting`` plates?

    It runs once under that plate (a prior draw per element); then every sample site's log
    density must carry the plate's dimension, and each element's log joint must equal the
    log joint of ``fn`` run alone at that element's values (a model that reads only the
    first element, say, fails here though its shapes broadcast).
    """
    dim = -(nesting + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trace = _trace(pyro.plate("_particles", size, dim=dim)(fn), kwargs)
            trace.compute_log_prob()
            batched, values = 0.0, [{} for _ in range(size)]
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                log_prob = site["log_prob"]
                if log_prob.dim() < -dim or log_prob.shape[dim] != size:
                    return False
                batched = batched + log_prob.movedim(dim, 0).reshape(size, -1).sum(-1)
                if name in latent:
                    value = site["value"]
                    if value.shape[:1] != (size,) or value[0].numel() != latent[name].numel():
                        return False
                    for i in range(size):
                        values[i][name] = value[i].reshape(latent[name])
            with torch.no_grad(), poutine.block():
                alone = [poutine.trace(poutine.condition(fn, v)).get_trace(**kwargs)
                         .log_prob_sum() for v in values]
    except Exception:  # the user's code failing batched: evaluate one at a time
        return False
    alone = torch.stack(alone)
    tol = 1e-6 if alone.dtype == torch.float64 else 1e-3
    return bool(torch.allclose(batched, alone, rtol=tol, atol=tol))
