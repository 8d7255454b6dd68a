"""One registry of models and inference methods for ``pyro-dgm compare``.

A *model* entry builds a :class:`Problem` (a Pyro model with its data) from the run
:class:`Settings`; a *method* entry runs inference on a problem and returns
``arviz.InferenceData`` (via :func:`pyro_dgm.compare.from_mcmc` or
:func:`~pyro_dgm.compare.from_guide`). New models and methods register themselves; the CLI
only looks names up::

    from pyro_dgm.registry import METHODS, register_method

    @register_method("my-mh", kind="mcmc", description="my Metropolis-Hastings")
    def run_my_mh(problem: Problem, settings: Settings):
        ...
        return from_mcmc(mcmc)

Modules listed in :data:`BUILTIN_MODULES` are imported on first lookup; third-party
packages can add modules through the ``pyro_dgm.plugins`` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import torch

__all__ = [
    "BUILTIN_MODULES",
    "METHODS",
    "MODELS",
    "MethodEntry",
    "ModelEntry",
    "Problem",
    "Registry",
    "Settings",
    "register_method",
    "register_model",
]

#: Modules whose import registers the built-in models and methods. Add yours here.
BUILTIN_MODULES = [
    "pyro_dgm.compare.methods",
    "pyro_dgm.compare.problems",
    "pyro_dgm.inference.methods_flows",
    "pyro_dgm.inference.methods_vi",
    "pyro_dgm.inference.methods_mcmc",
    "pyro_dgm.models.bnn_problems",
]


@dataclass
class Problem:
    """A Pyro model together with the arguments (data) to condition it on."""

    name: str
    model: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    #: posterior variables compared in the report (default: every latent site)
    var_names: list[str] | None = None
    description: str = ""
    #: the model broadcasts over a leading particle/draw dimension
    vectorizable: bool = True
    #: plates nested in the model (for vectorized particles)
    max_plate_nesting: int = 1
    #: let NUTS compile the potential with the PyTorch JIT
    jit_compile: bool = False


@dataclass(frozen=True)
class Settings:
    """Run settings shared by every method; ``None`` means the method's own default."""

    quick: bool = False
    num_samples: int = 1000
    num_warmup: int | None = None
    num_chains: int = 2
    num_steps: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: torch.dtype = torch.float64
    progress: bool = True


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[Settings], Problem]
    description: str = ""


@dataclass(frozen=True)
class MethodEntry:
    name: str
    run: Callable[[Problem, Settings], Any]
    kind: str = "vi"  # "mcmc" or "vi"
    description: str = ""


class Registry:
    """Name -> entry, with the built-in modules imported on first lookup."""

    def __init__(self, what: str, entry_type: type):
        self.what = what
        self.entry_type = entry_type
        self._entries: dict[str, Any] = {}

    def register(self, name: str, **meta) -> Callable:
        """Decorator registering ``fn`` under ``name`` (later registrations replace)."""

        def decorator(fn):
            self._entries[name] = self.entry_type(name, fn, **meta)
            return fn

        return decorator

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def get(self, name: str):
        load_builtins()
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        load_builtins()
        return name in self._entries


MODELS = Registry("model", ModelEntry)
METHODS = Registry("method", MethodEntry)
register_model = MODELS.register
register_method = METHODS.register
_loaded = False


def load_builtins() -> None:
    """Import :data:`BUILTIN_MODULES` and ``pyro_dgm.plugins`` entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group="pyro_dgm.plugins"):
        ep.load()
