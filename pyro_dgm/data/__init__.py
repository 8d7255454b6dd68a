"""Data sets that ship with scikit-learn (no downloads at run time) and synthetic data."""

from pyro_dgm.data.digits import load_digits
from pyro_dgm.data.tabular import TABULAR_DATASETS, load_tabular

__all__ = ["TABULAR_DATASETS", "load_digits", "load_tabular"]
