"""pyro_dgm: deep generative models and custom inference backends for Pyro.

Subpackages:

- :mod:`pyro_dgm.models` -- generative models written as Pyro programs, with exact answers
  where they exist (factor analysis).
- :mod:`pyro_dgm.inference` -- objectives, guides and MCMC kernels that plug into Pyro's
  ``SVI``/``MCMC``.
- :mod:`pyro_dgm.compare` -- ArviZ export of MCMC and VI posteriors and comparison reports.
- :mod:`pyro_dgm.data` -- data sets that ship with scikit-learn, and synthetic data.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
