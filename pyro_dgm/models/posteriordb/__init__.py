"""Pyro translations of posteriordb posteriors (stan-dev/posteriordb, BSD-3).

One module per Stan model, named after it; each module's model function has the Stan
model's name and takes the posterior's data by the names of posteriordb's data file
(converted by :func:`pyro_dgm.data.arrays.to_tensors`: reals as tensors of the run's dtype,
integer arrays as ``torch.long``, integer scalars as ``int``). Parameter sites have Stan's
parameter names and shapes; Stan's implicit flat priors on constrained parameters are
:class:`pyro.distributions.ImproperUniform` on the same support.

:data:`POSTERIORS` maps a posterior's name (``<data>-<model>``) to ``module:function``;
:func:`posterior_model` imports the function.

Example::

    >>> model = posterior_model("kidiq-kidscore_momiq")
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

__all__ = ["POSTERIORS", "posterior_model"]

#: posterior name -> "module:function" (module relative to this package)
POSTERIORS = {
    "arma-arma11": "arma11:arma11",
    "earnings-logearn_interaction_z": "logearn_interaction_z:logearn_interaction_z",
    "gp_pois_regr-gp_regr": "gp_regr:gp_regr",
    "kidiq-kidscore_momiq": "kidscore_momiq:kidscore_momiq",
    "mesquite-logmesquite_logvas": "logmesquite_logvas:logmesquite_logvas",
    "nes2000-nes": "nes:nes",
    "bball_drive_event_0-hmm_drive_0": "hmm_drive_0:hmm_drive_0",
    "mcycle_gp-accel_gp": "accel_gp:accel_gp",
}


def posterior_model(name: str) -> Callable:
    """The Pyro model function of the posterior ``name`` (a key of :data:`POSTERIORS`)."""
    if name not in POSTERIORS:
        raise ValueError(f"posterior: unknown posteriordb posterior {name!r}; valid: "
                         f"{', '.join(sorted(POSTERIORS))}")
    module, function = POSTERIORS[name].split(":")
    return getattr(import_module(f"{__name__}.{module}"), function)
