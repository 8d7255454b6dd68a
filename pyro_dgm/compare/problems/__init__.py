"""The built-in models of ``pyro-dgm compare``, one module per family.

- :mod:`~pyro_dgm.compare.problems.fa`: Bayesian factor analysis (``fa``, the default;
  ``fa-local``; ``fa-synthetic``);
- :mod:`~pyro_dgm.compare.problems.bnn`: a Bayesian neural network on Blundell's toy
  regression (``bnn``);
- :mod:`~pyro_dgm.compare.problems.mixture`: a Gaussian mixture with discrete assignments
  (``mixture``);
- :mod:`~pyro_dgm.compare.problems.posteriordb`: eight posteriordb posteriors with their
  reference draws (``posteriordb:<name>``);
- :mod:`~pyro_dgm.compare.problems.user`: a model function of your own from a file, with a
  data file (``PATH.py:FUNCTION``; built by :func:`~pyro_dgm.compare.problems.user.file_model`,
  not registered).

Importing this package registers them all. A new model goes in the module of its family (or
a new one imported here), registered with
:func:`pyro_dgm.compare.registry.register_model`.
"""

from pyro_dgm.compare.problems import bnn, fa, mixture, posteriordb, user

__all__ = ["bnn", "fa", "mixture", "posteriordb", "user"]
