r"""What a run is made of: the recognition model, the model–guide pair and the objective.

- :func:`make_guide`: the recognition model of a :class:`~pyro_dgm.models.DLGM` by name —
  ``"gaussian"`` is :class:`~pyro_dgm.models.DLGMGuide` (diagonal Gaussians from MLPs,
  bottom-up); ``"planar"``, ``"radial"``, ``"iaf"``, ``"realnvp"`` are
  :class:`~pyro_dgm.inference.flows.AmortizedFlowGuide` with a flow on every layer, all
  conditioned on an MLP encoding of ``x``;
- :func:`build`: model and guide of a :class:`~pyro_dgm.dlgm.TrainConfig` on the data's
  device and dtype, with every (lazily created) parameter in place, so an optimizer or a
  ``load_state_dict`` can follow at once;
- :func:`build_objective`: the ``pyro.infer.ELBO`` the config names, vectorized over ``k``
  particles (``Trace_ELBO``, :class:`~pyro_dgm.inference.IWAE` or
  :class:`~pyro_dgm.inference.PerturbativeELBO`).

The guides live here rather than next to the model because the flow guides come from
:mod:`pyro_dgm.inference`, which :mod:`pyro_dgm.models` never imports.

Example::

    >>> model = DLGM(64, [10])
    >>> guide = make_guide(model, "iaf", num_flows=2)
    >>> loss = build_objective(TrainConfig(objective="iwae", k=5))(model, guide)
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from pyro.infer import ELBO

from pyro_dgm._validation import check_choice
from pyro_dgm.defaults import DLGM_GUIDES
from pyro_dgm.dlgm.config import TrainConfig
from pyro_dgm.inference import IWAE, PerturbativeELBO
from pyro_dgm.inference.flows import AmortizedFlowGuide
from pyro_dgm.models.dlgm import DLGM, DLGMGuide

__all__ = ["GUIDES", "build", "build_objective", "make_guide"]

#: guide names accepted by :func:`make_guide`
GUIDES = DLGM_GUIDES


def make_guide(model: DLGM, guide: str = "gaussian", *, num_flows: int = 4,
               hidden_dims: Sequence[int] | None = None) -> torch.nn.Module:
    """The recognition model ``guide`` for ``model`` (see the module docstring).

    :param model: the :class:`~pyro_dgm.models.DLGM` to invert.
    :param guide: one of :data:`GUIDES`.
    :param num_flows: flows per stochastic layer (flow guides only).
    :param hidden_dims: hidden widths of the guide's networks (default: the model's).
    :raises ValueError: an unknown guide name.

    Example::

        >>> guide = make_guide(DLGM(64, [10]), "planar", num_flows=8)
    """
    check_choice("guide", guide, GUIDES)
    if guide == "gaussian":
        return DLGMGuide(model, hidden_dims)
    hidden = list(model.hidden_dims if hidden_dims is None else hidden_dims)
    return AmortizedFlowGuide(model, flow=guide, num_flows=num_flows, encoder_hidden=hidden)


def build_objective(config: TrainConfig) -> ELBO:
    """The ``pyro.infer.ELBO`` the config names (``k`` particles, vectorized).

    Example::

        >>> build_objective(TrainConfig(objective="iwae", k=5, estimator="dreg"))
    """
    if config.objective == "elbo":
        return pyro.infer.Trace_ELBO(num_particles=config.k, vectorize_particles=True,
                                     max_plate_nesting=1)
    if config.objective == "iwae":
        return IWAE(num_particles=config.k, estimator=config.estimator, max_plate_nesting=1)
    return PerturbativeELBO(order=config.order, num_particles=config.k, max_plate_nesting=1)


def build(config: TrainConfig, x_example: torch.Tensor) -> tuple[DLGM, torch.nn.Module]:
    """Model and guide of ``config`` on the data's device/dtype, all parameters created.

    :param x_example: data of the run (its width, dtype and device are used; the guide is
        run once on two rows so that lazily created parameters exist).

    Example::

        >>> model, guide = build(cfg, load_data(cfg))
    """
    model = DLGM(x_example.shape[-1], config.latent_dims, config.hidden_dims,
                 likelihood=config.likelihood).to(x_example)
    guide = make_guide(model, config.guide, num_flows=config.num_flows).to(x_example)
    with torch.no_grad(), pyro.poutine.block():  # lazy guides create their parameters
        guide(x_example, subsample=torch.arange(min(2, len(x_example)),
                                                device=x_example.device))
    return model, guide
