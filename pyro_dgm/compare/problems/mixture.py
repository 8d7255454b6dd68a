"""The ``mixture`` model of ``pyro-dgm compare``: a Gaussian mixture with discrete
assignments.

:class:`~pyro_dgm.models.GaussianMixture` with three components on 300 synthetic points
(equal weights, means -3, 0, 3, unit scales); the assignments are discrete, so compare it
with ``--methods nuts,gibbs`` (NUTS sums them out).

Example::

    pyro-dgm compare --model mixture --methods nuts,gibbs --quick --out report
"""

from __future__ import annotations

from pyro_dgm.compare.registry import register_model
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.models.gaussian_mixture import GaussianMixture

__all__: list[str] = []


@register_model("mixture", description="1-D Gaussian mixture, 3 components, 300 synthetic "
                "points; discrete assignments (use --methods nuts,gibbs)")
def build_mixture(settings: Settings) -> Problem:
    model = GaussianMixture(3, dtype=settings.dtype).to(settings.device)
    data = model.simulate(300, locs=[-3.0, 0.0, 3.0], scales=[1.0, 1.0, 1.0],
                          seed=settings.seed)
    return Problem("mixture", model, (data.x,), var_names=["weights", "locs", "scales"],
                   description="1-D Gaussian mixture (K = 3, ordered means), 300 synthetic "
                   "points", max_plate_nesting=1)
