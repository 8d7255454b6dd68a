"""Flow guides as methods of ``pyro-dgm compare``.

- ``flow-planar``, ``flow-radial``: :class:`~pyro_dgm.inference.flows.FlowGuide` with 16
  planar / radial layers (Rezende & Mohamed, 2015);
- ``flow-iaf``: 4 IAF layers with MADE ``[64, 64]`` (Kingma et al., 2016);
- ``flow-realnvp``: 8 affine coupling layers with ``[64, 64]`` (Dinh et al., 2017).

Each fits with :func:`~pyro_dgm.compare.methods.fitting.fit_svi` (Adam, rate decayed 10x) and is
exported with :func:`pyro_dgm.compare.from_guide`. Example::

    pyro-dgm compare --model fa --methods nuts,meanfield,flow-realnvp --quick --out report
"""

from __future__ import annotations

from pyro.infer.autoguide import init_to_median

from pyro_dgm.compare.methods.fitting import export_guide, fit_svi
from pyro_dgm.compare.registry import register_method
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.inference.flows import FlowGuide

__all__ = ["FLOW_METHODS", "run_flow_guide"]

#: method name -> (flow, num_flows, learning rate)
FLOW_METHODS = {
    "flow-planar": ("planar", 16, 1e-2),
    "flow-radial": ("radial", 16, 1e-2),
    "flow-iaf": ("iaf", 4, 3e-3),
    "flow-realnvp": ("realnvp", 8, 3e-3),
}


def run_flow_guide(problem: Problem, settings: Settings, method: str):
    """Fit the flow guide named ``method`` to ``problem`` and export its draws."""
    flow, num_flows, lr = FLOW_METHODS[method]
    guide = FlowGuide(problem.model, flow=flow, num_flows=num_flows,
                      init_loc_fn=init_to_median, init_scale=0.1)
    guide = guide.to(device=settings.device)
    steps = len(fit_svi(problem, guide, settings, lr=lr, desc=method))
    return export_guide(problem, guide, settings, {"svi_steps": steps})


def _register(method: str) -> None:
    flow, num_flows, _ = FLOW_METHODS[method]

    @register_method(method, kind="vi", description=f"FlowGuide: {num_flows} {flow} flows")
    def run(problem: Problem, settings: Settings):
        return run_flow_guide(problem, settings, method)


for _method in FLOW_METHODS:
    _register(_method)
