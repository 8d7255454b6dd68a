"""Tabular data sets bundled with scikit-learn, as standardized torch tensors.

Only scikit-learn's ``load_*`` functions are used: they read files installed with the
package, so nothing is downloaded at run time.

Example::

    >>> x = load_tabular("wine")          # (178, 13), each column mean 0 and sd 1
    >>> x.shape
    torch.Size([178, 13])
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_dgm._validation import check_choice, check_int

__all__ = ["TABULAR_DATASETS", "load_tabular"]

#: name -> scikit-learn loader name; all ship with scikit-learn.
TABULAR_DATASETS = {
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
    "diabetes": "load_diabetes",
    "iris": "load_iris",
}


def load_tabular(
    name: str,
    *,
    standardize: bool = True,
    max_rows: int | None = None,
    max_columns: int | None = None,
    return_target: bool = False,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
):
    """Load a bundled scikit-learn data set as a ``(rows, columns)`` tensor.

    :param name: one of :data:`TABULAR_DATASETS`.
    :param standardize: centre each column and scale it to unit standard deviation
        (population sd, computed on the rows returned).
    :param max_rows: keep the first ``max_rows`` rows (after a fixed shuffle with seed 0,
        so a subset keeps every class).
    :param max_columns: keep the first ``max_columns`` columns.
    :param return_target: also return the target vector.
    :return: ``x`` or ``(x, y)``.
    """
    import sklearn.datasets

    check_choice("dataset", name, TABULAR_DATASETS)
    bunch = getattr(sklearn.datasets, TABULAR_DATASETS[name])()
    data = np.asarray(bunch.data, dtype=np.float64)
    target = np.asarray(bunch.target)
    if max_rows is not None:
        max_rows = check_int("max_rows", max_rows, minimum=2)
        order = np.random.default_rng(0).permutation(data.shape[0])[:max_rows]
        data, target = data[order], target[order]
    if max_columns is not None:
        max_columns = check_int("max_columns", max_columns, minimum=1)
        data = data[:, :max_columns]
    if standardize:
        sd = data.std(axis=0)
        data = (data - data.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    x = torch.as_tensor(data, dtype=dtype, device=device)
    if return_target:
        return x, torch.as_tensor(target, device=device)
    return x
