r"""One Metropolis–Hastings accept/reject step for a batch of independent units (BlackJAX
style: the chain state apart from the per-step information).

Every unit (a chain, or a plate element of a site under Metropolis-within-Gibbs) at
position :math:`u` with log density :math:`\log\pi(u)` is offered a proposal :math:`u'`
drawn from a symmetric kernel and moves there with probability

.. math::

    \alpha(u, u') = \min\bigl\{1, \exp\bigl(\log\pi(u') - \log\pi(u)\bigr)\bigr\}

(Metropolis et al. 1953; Hastings 1970 for the general case, whose proposal-density ratio
vanishes for a symmetric random walk). The decision draws one uniform
:math:`U \sim \mathcal U(0, 1)` per unit and accepts iff :math:`\log U < \log\alpha`; a
proposal whose log density is NaN is rejected (:math:`\log\alpha = -\infty`), one at
:math:`-\infty` is never accepted, and none of this synchronizes with the device.

:func:`mh_step` is what :class:`~pyro_dgm.inference.RandomWalkMH` and
:class:`~pyro_dgm.inference.Gibbs` both call: they produce the proposal and its log density
(the proposal is tuned by :mod:`~pyro_dgm.inference.adaptation`), the step decides.

Example::

    >>> state = MHState(position=torch.zeros(64, 3), log_density=log_pi(torch.zeros(64, 3)))
    >>> proposal = state.position + 0.5 * torch.randn(64, 3)
    >>> state, info = mh_step(state, proposal, log_pi(proposal), event_dim=1)
    >>> info.accept_prob.mean()                      # the adaptation's input
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["MHInfo", "MHState", "Position", "check_finite_start", "log_acceptance_ratio",
           "mh_step"]

#: one tensor, or several tensors moved together (e.g. a value in constrained and in
#: unconstrained space), each of shape ``(*units, *event)``
Position = torch.Tensor | tuple[torch.Tensor, ...]


class MHState(NamedTuple):
    """Where a batch of units is: ``position`` and its ``log_density`` ``(*units)``."""

    position: Position
    log_density: torch.Tensor


class MHInfo(NamedTuple):
    """What one step did, per unit (all ``(*units)``)."""

    #: :math:`\log(\pi(u')/\pi(u))` with NaN mapped to :math:`-\infty`
    log_ratio: torch.Tensor
    #: :math:`\alpha = \min(1, \pi(u')/\pi(u))`
    accept_prob: torch.Tensor
    #: whether the unit moved to its proposal (``bool``)
    accepted: torch.Tensor


def log_acceptance_ratio(current: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\pi(u') - \log\pi(u)`, NaN (e.g. :math:`\infty - \infty`) mapped to
    :math:`-\infty` so that such a proposal is rejected."""
    ratio = proposed - current
    return ratio.masked_fill(torch.isnan(ratio), -math.inf)


def _select(accepted: torch.Tensor, proposal: Position, current: Position,
            event_dim: int) -> Position:
    mask = accepted.reshape(accepted.shape + (1,) * event_dim)
    if isinstance(proposal, tuple):
        return tuple(torch.where(mask, new, old)
                     for new, old in zip(proposal, current, strict=True))
    return torch.where(mask, proposal, current)


def mh_step(state: MHState, proposal: Position, proposal_log_density: torch.Tensor, *,
            event_dim: int = 0) -> tuple[MHState, MHInfo]:
    """Accept or reject ``proposal`` for every unit at once.

    :param state: the current positions and their log densities ``(*units)``.
    :param proposal: proposed positions, shaped (and nested) like ``state.position``.
    :param proposal_log_density: log density of the proposals, ``(*units)``.
    :param event_dim: trailing dims of each position tensor that belong to one unit.
    :return: the new state (the proposal where accepted) and the step's :class:`MHInfo`.
        Draws ``torch.rand`` of the units' shape once.
    """
    log_ratio = log_acceptance_ratio(state.log_density, proposal_log_density)
    accepted = torch.rand_like(log_ratio).log() < log_ratio
    new = MHState(_select(accepted, proposal, state.position, event_dim),
                  torch.where(accepted, proposal_log_density, state.log_density))
    return new, MHInfo(log_ratio, log_ratio.clamp(max=0.0).exp(), accepted)


def check_finite_start(log_density: torch.Tensor, where: Callable[[], str]) -> None:
    """Raise ``ValueError`` if any unit starts at a non-finite log density (a chain could
    never leave it); ``where()`` names the culprit. One host sync: call it at set-up only."""
    if not bool(torch.isfinite(log_density).all()):
        raise ValueError(f"initial_params: non-finite log density at the initial point: "
                         f"{where()}")
