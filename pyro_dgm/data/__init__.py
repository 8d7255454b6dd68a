"""Data sets that ship with scikit-learn (no downloads at run time), synthetic data, and a
model's named arrays from a file (:func:`load_arrays`)."""

from pyro_dgm.data.digits import load_digits
from pyro_dgm.data.files import load_arrays
from pyro_dgm.data.tabular import TABULAR_DATASETS, load_tabular
from pyro_dgm.data.toy_regression import blundell_toy_data, toy_function

__all__ = ["TABULAR_DATASETS", "blundell_toy_data", "load_arrays", "load_digits",
           "load_tabular", "toy_function"]
