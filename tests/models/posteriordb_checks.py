"""What the posteriordb translation tests share: the translation of a posterior, skipping
(with the reason) where the bundle or the translation module is not there yet."""

import pytest

from pyro_dgm.data import posteriordb as pdb
from pyro_dgm.models.posteriordb import POSTERIORS, posterior_model


def require_bundle() -> None:
    """Skip unless a posteriordb bundle is found."""
    if not pdb.posteriordb_available():
        pytest.skip("no posteriordb bundle found (see docs/posteriordb.md)")


def translation(name: str):
    """The Pyro model of ``name``; skip if its module is not written yet (any other import
    error is raised)."""
    module = f"pyro_dgm.models.posteriordb.{POSTERIORS[name].split(':')[0]}"
    try:
        return posterior_model(name)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        pytest.skip(f"{name}: translation {module} not written yet")
