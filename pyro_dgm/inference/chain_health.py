r"""Health of a batch of Markov chains: stuck chains and chains in a minor mode.

Many chains run as one batch (:class:`~pyro_dgm.inference.MCMC` with
``chain_method="vectorized"``) can hide a few bad ones in the pooled draws. Two checks find
them, both from per-chain sums the sampler accumulates on the device without a host
synchronization; the verdict is computed once, at the end of the run:

- **stuck**: the chain's acceptance rate over the sampling phase is below
  :data:`STUCK_ACCEPTANCE` (1%; a tuned random walk accepts about 23%);
- **minor mode**: the chain's mean log density :math:`\bar\ell_c` lies far below the main
  group of chains,

  .. math::

      \bar\ell_c < \operatorname{med}(\bar\ell) - \bigl(k\,s + m\bigr),
      \qquad s = 1.4826\,\operatorname{med}\lvert\bar\ell - \operatorname{med}(\bar\ell)\rvert,

  with :math:`k` = :data:`MODE_MADS` (5) robust standard deviations of the chain means (the
  median absolute deviation, scaled to a normal sd, so a few outlying chains do not widen
  it) plus an absolute margin :math:`m` = :data:`MODE_MARGIN` (2 nats: a density :math:`e^2
  \approx 7` times lower). The margin keeps a batch of very well mixed chains, whose means
  agree to a few hundredths of a nat, from flagging ordinary Monte Carlo scatter. The main
  group is the majority: if most chains sit in the minor mode, the few in the major one are
  not flagged (they lie *above* the median), and a minor mode with a *higher* density than
  the main one (a narrow spike of little mass) is not seen. R-hat across chains catches both.

With fewer than :data:`MIN_DRAWS` draws per chain nothing is flagged: a handful of draws says
too little (three draws at acceptance 0.23 are all rejected 46% of the time).

The same rule, :func:`main_group`, picks the chains that the warm-up adaptation of
:class:`~pyro_dgm.inference.RandomWalkMH` pools (see :mod:`pyro_dgm.inference.adaptation`).

Example::

    >>> health = chain_health(accept_count, log_density_sum, draws=1000)
    >>> health.minor_mode.nonzero().flatten().tolist()      # e.g. [3, 7, 20]
    >>> warn_chain_health(health, "RandomWalkMH")           # ChainHealthWarning naming them
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from pyro.distributions import Unit

from pyro_dgm.inference.model_info import is_deterministic

__all__ = ["MIN_DRAWS", "MODE_MADS", "MODE_MARGIN", "STUCK_ACCEPTANCE", "ChainHealth",
           "ChainHealthWarning", "chain_health", "main_group", "per_chain_data",
           "warn_chain_health"]

#: acceptance rate below which a chain counts as stuck
STUCK_ACCEPTANCE = 0.01
#: robust standard deviations (scaled MAD) of the chain means a minor-mode chain lies below
MODE_MADS = 5.0
#: absolute margin (nats) added to the robust spread before a chain counts as in a minor mode
MODE_MARGIN = 2.0
#: fewest draws per chain for which chains are flagged
MIN_DRAWS = 50

_MAD_TO_SD = 1.4826  # MAD of a normal sample times this estimates its sd


class ChainHealthWarning(UserWarning):
    """Some chains of a run are stuck or sit in a minor mode (their indices are named)."""


class ChainHealth(NamedTuple):
    """Per-chain health of a run, tensors of shape ``(chains,)`` on the sampler's device."""

    #: fraction of the sampling-phase proposals accepted
    acceptance: torch.Tensor
    #: mean log density over the sampling phase (in the sampler's space, e.g. unconstrained)
    mean_log_density: torch.Tensor
    #: acceptance below :data:`STUCK_ACCEPTANCE` (``bool``)
    stuck: torch.Tensor
    #: mean log density far below the main group, see :func:`main_group` (``bool``)
    minor_mode: torch.Tensor


def main_group(values: torch.Tensor, mads: float = MODE_MADS, margin: float = MODE_MARGIN,
               *, two_sided: bool = False) -> torch.Tensor:
    r"""Which units are in the main group of ``values`` (e.g. chains' mean log densities).

    :param values: ``(U,)`` per-unit statistic, larger is better.
    :param mads: :math:`k`, scaled median absolute deviations allowed below the median.
    :param margin: :math:`m`, an absolute allowance added to :math:`k s`.
    :param two_sided: also leave out units as far *above* the median (what the warm-up
        adaptation pools: a chain alone in a narrow spike says nothing about the bulk).
    :return: ``bool`` tensor ``(U,)``: :math:`v_u \ge \operatorname{med}(v) - (k s + m)`.
        Never synchronizes with the device; the median unit is always in the group.
    """
    med = values.median()
    allowance = (values - med).abs().median() * _MAD_TO_SD * mads + margin
    keep = values >= med - allowance
    return keep & (values <= med + allowance) if two_sided else keep


def chain_health(accept_count: torch.Tensor, log_density_sum: torch.Tensor, draws: int, *,
                 compare_chains: bool = True) -> ChainHealth:
    """Health of every chain from its accepted proposals and summed log densities over
    ``draws`` sampling steps (no flags when ``draws`` < :data:`MIN_DRAWS`; no minor-mode
    flags unless ``compare_chains``, i.e. when the chains have different targets)."""
    n = max(draws, 1)
    acceptance = accept_count / n
    mean_ld = log_density_sum / n
    none = torch.zeros_like(acceptance, dtype=torch.bool)
    if draws < MIN_DRAWS:
        return ChainHealth(acceptance, mean_ld, none, none.clone())
    return ChainHealth(acceptance, mean_ld, acceptance < STUCK_ACCEPTANCE,
                       ~main_group(mean_ld) if compare_chains else none)


def per_chain_data(chain_model) -> bool:
    """Whether a :class:`~pyro_dgm.inference.ChainModel`'s observed data carry a chain
    dimension (each chain its own data set, hence its own posterior): an observed site
    whose value has more batch dims than the model's plates (one trace of the model)."""
    trace = chain_model.trace(chain_model.prior_values)
    nesting = chain_model.max_plate_nesting
    for name, node in trace.nodes.items():
        if (node["type"] != "sample" or not node["is_observed"] or name in chain_model.sites
                or is_deterministic(node)
                or isinstance(node["fn"], Unit)):
            continue
        value = node["value"]
        lead = value.dim() - getattr(node["fn"], "event_dim", 0) - (nesting + 1)
        if lead >= 0 and value.shape[lead] == chain_model.num_chains:
            return True
    return False


def warn_chain_health(health: ChainHealth, who: str, stacklevel: int = 1) -> None:
    """Issue one :class:`ChainHealthWarning` naming the stuck and the minor-mode chains, if
    any (one host synchronization)."""
    stuck = health.stuck.nonzero().flatten().tolist()
    minor = health.minor_mode.nonzero().flatten().tolist()
    if not stuck and not minor:
        return
    parts = []
    if stuck:
        parts.append(f"chains {stuck} are stuck (acceptance below {STUCK_ACCEPTANCE:g})")
    if minor:
        med = float(health.mean_log_density.median())
        lows = ", ".join(f"{float(health.mean_log_density[c]):.4g}" for c in minor)
        parts.append(f"chains {minor} sit in a minor mode (mean log density {lows} against "
                     f"the median {med:.4g})")
    warnings.warn(f"{who}: " + "; ".join(parts) + ". Their draws are not from the main "
                  "mode: drop them, start them elsewhere or run longer; see the "
                  "sample_stats 'stuck_chain' and 'minor_mode'.",
                  ChainHealthWarning, stacklevel=stacklevel + 1)
