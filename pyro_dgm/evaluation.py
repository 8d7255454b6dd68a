"""Evaluating deep latent Gaussian models (old import path of :mod:`pyro_dgm.dlgm.evaluation`).

Deprecated: kept for old imports; will be removed — import from pyro_dgm.dlgm.
"""

from pyro_dgm.dlgm.evaluation import (
    active_units,
    bits_per_dim,
    evaluate_run,
    impute,
    quadrature_log_likelihood,
    save_image_grid,
    test_elbo,
    test_log_likelihood,
)

__all__ = ["active_units", "bits_per_dim", "evaluate_run", "impute",
           "quadrature_log_likelihood", "save_image_grid", "test_elbo", "test_log_likelihood"]
