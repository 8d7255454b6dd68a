"""Objectives, guides and MCMC kernels that plug into Pyro's ``SVI`` and ``MCMC``."""

__all__: list[str] = []

# normalizing-flow guides (planar, radial, IAF, Real NVP): global and amortized
from pyro_dgm.inference.flows import (  # noqa: E402
    AmortizedFlowGuide,
    FlowDistribution,
    FlowGuide,
    NotInvertibleError,
)

__all__ += ["AmortizedFlowGuide", "FlowDistribution", "FlowGuide", "NotInvertibleError"]
