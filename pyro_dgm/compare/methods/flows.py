"""Flow guides as methods of ``pyro-dgm compare``, each started where full-rank ADVI ends.

- ``flow-planar``, ``flow-radial``: :class:`~pyro_dgm.inference.flows.FlowGuide` with 16
  planar / radial layers (Rezende & Mohamed, 2015);
- ``flow-iaf``: 4 IAF layers with MADE ``[64, 64]`` (Kingma et al., 2016);
- ``flow-realnvp``: 8 affine coupling layers with ``[64, 64]`` (Dinh et al., 2017).

Each runs in two stages (:func:`run_flow_guide`):

1. full-rank ADVI exactly as the ``fullrank`` method fits it
   (:func:`~pyro_dgm.compare.methods.pyro.fit_fullrank`, its mean started at the MAP);
2. the flow guide with that Gaussian as its ``base``: the flows act on the Gaussian's
   standardized space and start at the identity, so the guide starts *as* the Gaussian.
   It is fitted with :func:`~pyro_dgm.compare.methods.fitting.fit_svi` (the same convergence
   rule and step cap as every SVI method, the step guard, ClippedAdam) at a rate set for a
   space where the posterior is roughly :math:`\\mathcal N(0, I)`, with 16 particles.

The posterior's ``svi_steps`` is the sum of both stages; ``affine_steps``, ``flow_steps``
and ``rejected_steps`` (the guard's) are recorded too, and ``svi_start`` (where the
Gaussian started). Example::

    pyro-dgm compare --model fa --methods nuts,fullrank,flow-realnvp --quick --out report
"""

from __future__ import annotations

from pyro.infer import Trace_ELBO

from pyro_dgm.compare.methods.fitting import SVILosses, export_guide, fit_svi
from pyro_dgm.compare.methods.pyro import fit_fullrank
from pyro_dgm.compare.registry import register_method
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.inference.flows import FlowGuide

__all__ = ["FLOW_CLIP", "FLOW_METHODS", "FLOW_PARTICLES", "fit_flow_stage", "run_flow_guide"]

#: method name -> (flow, num_flows, learning rate in the standardized space)
FLOW_METHODS = {
    "flow-planar": ("planar", 16, 3e-3),
    "flow-radial": ("radial", 16, 3e-3),
    "flow-iaf": ("iaf", 4, 1e-3),
    "flow-realnvp": ("realnvp", 8, 1e-3),
}
#: ELBO particles per step of the flow stage
FLOW_PARTICLES = 16
#: ClippedAdam's bound on each gradient entry in the flow stage
FLOW_CLIP = 5.0


def fit_flow_stage(problem: Problem, settings: Settings, method: str,
                   gaussian) -> tuple[FlowGuide, SVILosses]:
    """The second stage of ``method``: its flow guide on the fitted ``gaussian`` (the base),
    fitted by :func:`~pyro_dgm.compare.methods.fitting.fit_svi`."""
    flow, num_flows, lr = FLOW_METHODS[method]
    guide = FlowGuide(problem.model, flow=flow, num_flows=num_flows, base=gaussian)
    guide = guide.to(device=settings.device)
    loss = Trace_ELBO(num_particles=FLOW_PARTICLES, vectorize_particles=problem.vectorizable,
                      max_plate_nesting=problem.max_plate_nesting)
    losses = fit_svi(problem, guide, settings, loss=loss, lr=lr, clip_norm=FLOW_CLIP,
                     desc=method)
    return guide, losses


def run_flow_guide(problem: Problem, settings: Settings, method: str):
    """Fit full-rank ADVI, then the flow guide named ``method`` on top; export its draws."""
    gaussian, affine_steps = fit_fullrank(problem, settings, desc=f"{method} (fullrank)")
    guide, losses = fit_flow_stage(problem, settings, method, gaussian)
    return export_guide(problem, guide, settings, {
        "svi_steps": affine_steps + len(losses), "affine_steps": affine_steps,
        "svi_start": gaussian.start,
        "flow_steps": len(losses), "rejected_steps": losses.rejected})


def _register(method: str) -> None:
    flow, num_flows, _ = FLOW_METHODS[method]

    @register_method(method, kind="vi",
                     description=f"FlowGuide: {num_flows} {flow} flows on full-rank ADVI")
    def run(problem: Problem, settings: Settings):
        return run_flow_guide(problem, settings, method)


for _method in FLOW_METHODS:
    _register(_method)
