"""Evaluating deep latent Gaussian models (old import path of :mod:`pyro_dgm.dlgm.evaluation`).

Deprecated: kept for old imports; will be removed — import from pyro_dgm.dlgm.

Every public name of :mod:`pyro_dgm.dlgm.evaluation` is forwarded, e.g.
``from pyro_dgm.evaluation import test_log_likelihood``.
"""

from pyro_dgm.dlgm import evaluation as _moved

__all__ = list(_moved.__all__)


def __getattr__(name: str):
    if name in __all__:
        return getattr(_moved, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
