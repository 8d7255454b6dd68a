"""The built-in inference methods of ``pyro-dgm compare``, one module per family.

- :mod:`~pyro_dgm.compare.methods.pyro`: Pyro's NUTS (the reference) and autoguides
  (``nuts``, ``meanfield``, ``fullrank``, ``laplace``);
- :mod:`~pyro_dgm.compare.methods.objectives`: this package's objectives (``iwae``,
  ``iwae-sir``, ``perturbative``);
- :mod:`~pyro_dgm.compare.methods.samplers`: this package's MCMC kernels (``mh``,
  ``gibbs``);
- :mod:`~pyro_dgm.compare.methods.flows`: normalizing-flow guides (``flow-planar``,
  ``flow-radial``, ``flow-iaf``, ``flow-realnvp``);
- :mod:`~pyro_dgm.compare.methods.pathfinder`: Pathfinder (``pathfinder``).

Importing this package registers them all. What they share: :func:`fit_svi`,
:func:`export_guide`, :func:`run_vectorized` (:mod:`~pyro_dgm.compare.methods.fitting`) and
the MCMC (and full-rank ADVI) start :func:`map_start` / :func:`shared_map_start` /
:func:`init_to_jittered` (:mod:`~pyro_dgm.compare.methods.starts`). A new method goes in
the module of its family, registered with :func:`pyro_dgm.compare.registry.register_method`.
"""

from pyro_dgm.compare.methods import flows, objectives, pathfinder, pyro, samplers
from pyro_dgm.compare.methods.fitting import export_guide, fit_svi, run_vectorized, vi_draws
from pyro_dgm.compare.methods.starts import init_to_jittered, map_start, shared_map_start

__all__ = [
    "export_guide",
    "fit_svi",
    "flows",
    "init_to_jittered",
    "map_start",
    "objectives",
    "pathfinder",
    "pyro",
    "run_vectorized",
    "samplers",
    "shared_map_start",
    "vi_draws",
]
