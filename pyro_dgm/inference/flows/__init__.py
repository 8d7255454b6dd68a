"""Normalizing flows for variational guides (one flow per module) and the guides using them.

- :mod:`~pyro_dgm.inference.flows.base`: the conditional-flow contract
  (:class:`ConditionalFlow`, :class:`NotInvertibleError`);
- :class:`Planar`, :class:`Radial` (Rezende & Mohamed, 2015), :class:`IAF` (Kingma et al.,
  2016), :class:`AffineCoupling` (Real NVP, Dinh et al., 2017);
- :func:`build_flows`, :data:`FLOWS`: flow stacks by name;
- :class:`FlowDistribution`: a diagonal Gaussian pushed through a flow stack;
- :class:`FlowGuide`: a global autoguide, optionally started on an affine fit of the
  posterior (``base=``) whose standardized space its flows act on; every layer starts at the
  identity; :class:`AmortizedFlowGuide`: an amortized guide for local latents in a data
  plate.
"""

from pyro_dgm.inference.flows.amortized import AmortizedFlowGuide
from pyro_dgm.inference.flows.base import ConditionalFlow, NotInvertibleError
from pyro_dgm.inference.flows.distribution import FlowDistribution
from pyro_dgm.inference.flows.flow_guide import FlowGuide
from pyro_dgm.inference.flows.iaf import IAF, MADE
from pyro_dgm.inference.flows.planar import Planar
from pyro_dgm.inference.flows.radial import Radial
from pyro_dgm.inference.flows.realnvp import AffineCoupling
from pyro_dgm.inference.flows.stack import FLOWS, FlowSequence, build_flows

__all__ = [
    "FLOWS",
    "IAF",
    "MADE",
    "AffineCoupling",
    "AmortizedFlowGuide",
    "ConditionalFlow",
    "FlowDistribution",
    "FlowGuide",
    "FlowSequence",
    "NotInvertibleError",
    "Planar",
    "Radial",
    "build_flows",
]
