"""Data sets that ship with scikit-learn (no downloads at run time) and synthetic data."""

from pyro_dgm.data.digits import load_digits
from pyro_dgm.data.tabular import TABULAR_DATASETS, load_tabular
from pyro_dgm.data.toy_regression import blundell_toy_data, toy_function

__all__ = ["TABULAR_DATASETS", "blundell_toy_data", "load_digits", "load_tabular",
           "toy_function"]
