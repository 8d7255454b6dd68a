"""Version-independent access to ArviZ (0.x ``InferenceData`` and 1.x ``DataTree``)."""

from __future__ import annotations

import warnings

__all__ = ["arviz", "group_names", "is_arviz_1", "set_attrs"]


def _import():
    with warnings.catch_warnings():
        # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning at import time
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as module
    return module


arviz = _import()


def is_arviz_1() -> bool:
    """True on ArviZ >= 1.0 (``from_dict`` takes one dict of groups, returns a DataTree)."""
    return int(arviz.__version__.split(".")[0]) >= 1


def group_names(idata) -> list[str]:
    """Names of the groups (``posterior``, ``sample_stats``, ...) of ``idata``."""
    if is_arviz_1():
        return list(idata.children)
    return list(idata.groups())


def set_attrs(idata, attrs: dict) -> None:
    """Set ``attrs`` on every group (``InferenceData.attrs`` does not survive NetCDF)."""
    for name in group_names(idata):
        idata[name].attrs.update(attrs)
