"""posteriordb posteriors as comparison models: ``posteriordb:<name>``.

Each of the eight posteriors of :mod:`pyro_dgm.data.posteriordb` is registered as the model
``posteriordb:<name>`` (e.g. ``pyro-dgm compare --model posteriordb:kidiq-kidscore_momiq``).
Its :class:`~pyro_dgm.compare.settings.Problem` holds:

- the Pyro translation :func:`pyro_dgm.models.posteriordb.posterior_model` (imported when
  the problem is built);
- the posterior's data as keyword arguments, converted by
  :func:`pyro_dgm.data.arrays.to_tensors` (reals in the run's dtype, Stan ``int`` arrays as
  ``torch.long``, ``int`` scalars as Python ``int``);
- posteriordb's reference draws (10 chains x 100, thinned from 10 x 1,000) as an
  ``arviz.InferenceData`` whose posterior group has the Stan parameter names and shapes,
  dims ``chain``/``draw`` first — the reference every method is scored against. Where the
  bundle's draws are our own (``dev/reference_draws.py``; the manifest says so,
  :func:`~pyro_dgm.data.posteriordb.posteriordb_reference_source`), ``reference_source``
  is that description, not posteriordb's.

Whether a translation broadcasts over leading particle dimensions, and how many plates it
nests, is in :data:`MODEL_OPTIONS` (``vectorizable=False`` unless checked:
``tests/models/test_posteriordb_translations.py`` compares the vectorized log density with
draw-by-draw evaluation for every entry marked ``True``).

Example::

    >>> from pyro_dgm.compare.registry import MODELS
    >>> problem = MODELS.get("posteriordb:kidiq-kidscore_momiq").build(default_settings())
    >>> problem.reference.posterior["beta"].shape
    (10, 100, 2)
"""

from __future__ import annotations

import numpy as np

from pyro_dgm.compare.registry import register_model
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.data.arrays import to_tensors
from pyro_dgm.data.posteriordb import (
    load_posteriordb_data,
    load_posteriordb_reference,
    posteriordb_has_reference,
    posteriordb_names,
    posteriordb_parameters,
    posteriordb_reference_source,
)

__all__ = ["MODEL_OPTIONS", "REFERENCE_SOURCE", "posteriordb_problem", "reference_idata"]

#: the model name prefix in the registry
PREFIX = "posteriordb:"

#: posterior -> Problem options of its translation: ``vectorizable`` (broadcasts over
#: leading particle/draw dimensions to the left of its plates) and ``max_plate_nesting``.
#: ``True`` where the vectorized-scoring test passed on the translation (checked against
#: the translations of the pdb-models branches); ``False`` until then
MODEL_OPTIONS: dict[str, dict] = {
    "arma-arma11": {"vectorizable": True, "max_plate_nesting": 1},
    "earnings-logearn_interaction_z": {"vectorizable": True, "max_plate_nesting": 1},
    "gp_pois_regr-gp_regr": {"vectorizable": True, "max_plate_nesting": 1},
    "kidiq-kidscore_momiq": {"vectorizable": True, "max_plate_nesting": 1},
    "mesquite-logmesquite_logvas": {"vectorizable": True, "max_plate_nesting": 1},
    "nes2000-nes": {"vectorizable": True, "max_plate_nesting": 1},
    "bball_drive_event_0-hmm_drive_0": {"vectorizable": True, "max_plate_nesting": 1},
    "mcycle_gp-accel_gp": {"vectorizable": True, "max_plate_nesting": 1},
}

#: where the reference draws come from (``{name}`` filled in)
REFERENCE_SOURCE = ("posteriordb {name} reference draws (10 chains x 100, thinned from "
                    "10 x 1,000; stan-dev/posteriordb @28f8d3d)")

_DESCRIPTIONS = {
    "arma-arma11": "ARMA(1,1) time series, 200 observations (4 parameters)",
    "earnings-logearn_interaction_z": "log earnings on standardized height x sex, "
                                      "regression (5 parameters)",
    "gp_pois_regr-gp_regr": "Gaussian process regression, 11 points, squared-exponential "
                            "kernel (3 parameters)",
    "kidiq-kidscore_momiq": "child IQ on mother's IQ, linear regression (3 parameters)",
    "mesquite-logmesquite_logvas": "log mesquite weight, 6 predictors (8 parameters)",
    "nes2000-nes": "party identification, 2000 election survey, regression (10 parameters)",
    "bball_drive_event_0-hmm_drive_0": "two-state HMM with exponential emissions, "
                                       "simplex + ordered parameters (8 parameters)",
    "mcycle_gp-accel_gp": "heteroscedastic approximate GP (brms), motorcycle data "
                          "(66 parameters)",
}


def reference_idata(name: str):
    """The bundle's reference draws of ``name`` as ``arviz.InferenceData`` (posterior
    group, dims ``chain`` x ``draw`` x the parameter's Stan shape), or ``None`` when the
    bundle holds none."""
    if not posteriordb_has_reference(name):
        return None
    import arviz as az

    draws = load_posteriordb_reference(name)
    return az.from_dict(posterior={k: np.ascontiguousarray(v) for k, v in draws.items()})


def _reference_source(name: str) -> str:
    own = posteriordb_reference_source(name)
    return f"{name}: {own}" if own else REFERENCE_SOURCE.format(name=name)


def posteriordb_problem(name: str, settings: Settings) -> Problem:
    """The :class:`Problem` of the posteriordb posterior ``name`` (see the module docstring).

    :raises ValueError: naming ``name`` when it is not one of the eight.
    :raises FileNotFoundError: when no posteriordb bundle is found.
    """
    from pyro_dgm.models.posteriordb import posterior_model

    kwargs = to_tensors(load_posteriordb_data(name), dtype=settings.dtype,
                        device=settings.device)
    reference = reference_idata(name)
    return Problem(
        f"{PREFIX}{name}", posterior_model(name), kwargs=kwargs,
        var_names=list(posteriordb_parameters(name)),
        description=f"posteriordb {name}: {_DESCRIPTIONS[name]}",
        reference=reference,
        reference_source=_reference_source(name) if reference is not None else "",
        **MODEL_OPTIONS[name])


def _register(name: str) -> None:
    @register_model(f"{PREFIX}{name}", description=_DESCRIPTIONS[name])
    def build(settings: Settings) -> Problem:
        return posteriordb_problem(name, settings)


for _name in posteriordb_names():
    _register(_name)
