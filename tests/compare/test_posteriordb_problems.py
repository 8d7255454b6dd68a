"""posteriordb posteriors as comparison models: registry entries, data, reference draws."""

import numpy as np
import pytest
import torch

import pyro_dgm.models.posteriordb as translations
from pyro_dgm.compare.problems import posteriordb as problems
from pyro_dgm.compare.registry import MODELS
from pyro_dgm.compare.settings import default_settings
from pyro_dgm.data import posteriordb as pdb

needs_bundle = pytest.mark.skipif(not pdb.posteriordb_available(),
                                  reason="no posteriordb bundle found (see docs/posteriordb.md)")


def test_every_posterior_is_registered_with_options():
    for name in pdb.posteriordb_names():
        assert f"posteriordb:{name}" in MODELS
        assert set(problems.MODEL_OPTIONS[name]) == {"vectorizable", "max_plate_nesting"}
    assert set(problems.MODEL_OPTIONS) == set(translations.POSTERIORS)


@needs_bundle
@pytest.mark.parametrize("name", ["kidiq-kidscore_momiq", "bball_drive_event_0-hmm_drive_0",
                                  "mcycle_gp-accel_gp"])
def test_problem_holds_data_and_reference(name, monkeypatch):
    """The wiring, with the translation replaced by a stub (the translations have their own
    tests): keyword data typed by Stan, reference in the Stan parameter shapes."""
    def stub(**kwargs):
        return None

    monkeypatch.setattr(translations, "posterior_model", lambda n: stub)
    settings = default_settings(quick=True, dtype=torch.float32)
    problem = MODELS.get(f"posteriordb:{name}").build(settings)
    assert problem.model is stub and problem.name == f"posteriordb:{name}"
    params = pdb.posteriordb_parameters(name)
    assert problem.var_names == list(params)
    for key, value in pdb.load_posteriordb_data(name).items():
        got = problem.kwargs[key]
        if value.ndim == 0 and value.dtype == np.int64:
            assert got == int(value) and isinstance(got, int)
        else:
            assert got.dtype == (torch.long if value.dtype == np.int64 else torch.float32)
            assert tuple(got.shape) == value.shape
    if not pdb.posteriordb_has_reference(name):
        assert problem.reference is None and problem.reference_source == ""
        return
    posterior = problem.reference.posterior
    assert set(posterior.data_vars) == set(params)
    for param, (_, _, shape) in params.items():
        assert posterior[param].dims[:2] == ("chain", "draw")
        assert posterior[param].shape == (10, 100, *shape)
        np.testing.assert_array_equal(posterior[param].values,
                                      pdb.load_posteriordb_reference(name)[param])
    assert name in problem.reference_source
    own = pdb.posteriordb_reference_source(name)  # draws made here, not posteriordb's
    if own is None:
        assert "@28f8d3d" in problem.reference_source
    else:
        assert own in problem.reference_source and "@28f8d3d" not in problem.reference_source
