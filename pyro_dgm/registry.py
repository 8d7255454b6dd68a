"""Deprecated: kept for old imports; will be removed — import from
:mod:`pyro_dgm.compare.registry`.

The registry of ``pyro-dgm compare`` models and methods now lives in the comparison package
(built-ins are registered by plain imports there, not by importing higher modules by name).
"""

from pyro_dgm.compare.registry import *  # noqa: F403
from pyro_dgm.compare.registry import __all__  # noqa: F401
