"""The ``pathfinder`` method of ``pyro-dgm compare``: :class:`pyro_dgm.inference.Pathfinder`
(Zhang, Carpenter, Gelman & Vehtari 2022) with Stan's defaults (4 paths, 25 draws per ELBO
estimate, starts uniform in (-2, 2) on the unconstrained scale; history 6), exported with
:func:`~pyro_dgm.compare.methods.fitting.export_guide` like every VI method. The export's
attributes record the gradient evaluations, the paths' ELBOs and weights and the PSIS
k-hat of the pooled path draws.
"""

from __future__ import annotations

from pyro_dgm.compare.methods.fitting import export_guide, vi_draws
from pyro_dgm.compare.registry import register_method
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.inference.pathfinder import Pathfinder

__all__: list[str] = []


@register_method("pathfinder", kind="vi",
                 description="Pathfinder: L-BFGS paths, quasi-Newton Gaussians, PSIS")
def run_pathfinder(problem: Problem, settings: Settings):
    guide = Pathfinder(problem.model, num_draws=vi_draws(settings))
    guide.fit(*problem.args, **problem.kwargs)
    attrs = {"num_grad_evals": guide.num_grad_evals,
             "num_logp_evals": guide.num_logp_evals,
             "pathfinder_khat": guide.khat,
             "path_elbos": [float(e) for e in guide.path_elbos],
             "path_weights": [float(w) for w in guide.path_weights]}
    return export_guide(problem, guide, settings, attrs=attrs)
