"""One registry of models and inference methods for ``pyro-dgm compare``.

A *model* entry builds a :class:`~pyro_dgm.compare.settings.Problem` (a Pyro model with its
data) from the run :class:`~pyro_dgm.compare.settings.Settings`; a *method* entry runs
inference on a problem and returns ``arviz.InferenceData`` (via
:func:`pyro_dgm.compare.from_mcmc` or :func:`~pyro_dgm.compare.from_guide`).

The built-in entries live in :mod:`pyro_dgm.compare.methods` and
:mod:`pyro_dgm.compare.problems`, which :mod:`pyro_dgm.compare` imports (so importing
anything from the comparison fills the registry). Third-party packages add entries through
the ``pyro_dgm.plugins`` entry-point group, loaded on the first lookup. Your own::

    from pyro_dgm.compare.registry import register_method

    @register_method("my-mh", kind="mcmc", description="my Metropolis-Hastings")
    def run_my_mh(problem: Problem, settings: Settings):
        ...
        return from_mcmc(mcmc)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pyro_dgm.compare.settings import Problem, Settings

__all__ = [
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

#: entry-point group through which other packages add models and methods
PLUGIN_GROUP = "pyro_dgm.plugins"


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
    """Name -> entry; plugins of :data:`PLUGIN_GROUP` are loaded on the first lookup."""

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
        _load_plugins()
        return sorted(self._entries)

    def get(self, name: str):
        _load_plugins()
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        _load_plugins()
        return name in self._entries


MODELS = Registry("model", ModelEntry)
METHODS = Registry("method", MethodEntry)
register_model = MODELS.register
register_method = METHODS.register
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group=PLUGIN_GROUP):
            ep.load()
