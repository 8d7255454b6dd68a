r"""Nested :math:`\hat R` for many short chains started in groups (Margossian, Hoffman,
Sountsov, Riou-Durand, Vehtari & Gelman 2024, "Nested :math:`\hat R`: assessing the
convergence of Markov chain Monte Carlo when running many short chains", Bayesian Analysis).

The :math:`KM` chains of :math:`N` draws each form :math:`K` *superchains* of :math:`M`
chains (chains ``k*M .. (k+1)*M - 1`` are superchain :math:`k`; chains of one superchain
should start from the same point). With :math:`\bar\theta_{\cdot mk}` the mean of chain
:math:`m` of superchain :math:`k`, :math:`\bar\theta_{\cdot\cdot k}` the superchain's mean
and :math:`\bar\theta_{\cdot\cdot\cdot}` the overall mean,

.. math::

    \hat B_\nu = \frac1{K-1}\sum_k (\bar\theta_{\cdot\cdot k} -
    \bar\theta_{\cdot\cdot\cdot})^2,\qquad
    \hat W_\nu = \frac1K\sum_k \bigl(\tilde B_k + \tilde W_k\bigr),

    \tilde B_k = \frac1{M-1}\sum_m (\bar\theta_{\cdot mk} - \bar\theta_{\cdot\cdot k})^2,
    \qquad \tilde W_k = \frac1M\sum_m \frac1{N-1}\sum_n (\theta_{nmk} -
    \bar\theta_{\cdot mk})^2,

(:math:`\tilde B_k = 0` when :math:`M = 1`, :math:`\tilde W_k = 0` when :math:`N = 1`) and

.. math::

    \mathfrak n\hat R = \sqrt{1 + \hat B_\nu / \hat W_\nu}.

With :math:`M = 1` it is the classical (not split) :math:`\hat R` with its
:math:`(N-1)/N` term replaced by 1. Chains that agree give values near 1 even when each
chain is short, because a superchain's variance includes the spread of its chains; a
threshold such as :math:`\mathfrak n\hat R < 1.01` then says the superchains, started
apart, have forgotten their starts.

Example::

    >>> idata = from_mcmc(mcmc)                # 64 chains, e.g. 8 groups of 8 from 8 starts
    >>> nested_rhat(idata, num_superchains=8)["beta"].values
"""

from __future__ import annotations

import numpy as np

from pyro_dgm._validation import check_int

__all__ = ["nested_rhat", "nested_rhat_array"]


def nested_rhat_array(draws, num_superchains: int) -> np.ndarray:
    r""":math:`\mathfrak n\hat R` of ``draws`` of shape ``(chains, draws, *event)``,
    one value per event element.

    :raises ValueError: ``num_superchains`` below 2 or not dividing the number of chains;
        ``draws`` with fewer than 2 dims.
    """
    x = np.asarray(draws, dtype=float)
    if x.ndim < 2:
        raise ValueError(f"draws: need shape (chains, draws, ...), got {x.shape}")
    chains, n = x.shape[:2]
    k = check_int("num_superchains", num_superchains, minimum=2)
    if chains % k:
        raise ValueError(f"num_superchains: {k} does not divide the {chains} chains")
    m = chains // k
    x = x.reshape((k, m, n) + x.shape[2:])
    chain_mean = x.mean(2)  # (K, M, ...)
    super_mean = chain_mean.mean(1)  # (K, ...)
    between = super_mean.var(0, ddof=1)
    between_chains = chain_mean.var(1, ddof=1) if m > 1 else np.zeros_like(super_mean)
    within = x.var(2, ddof=1).mean(1) if n > 1 else np.zeros_like(super_mean)
    total_within = (between_chains + within).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(1.0 + between / total_within)


def nested_rhat(idata, num_superchains: int, var_names: list[str] | None = None):
    r""":math:`\mathfrak n\hat R` of every variable of ``idata.posterior`` (an xarray
    ``Dataset`` shaped like the posterior less its ``chain`` and ``draw`` dims).

    :param idata: ``arviz.InferenceData`` (or an xarray ``Dataset`` with ``chain`` and
        ``draw`` dims) whose consecutive chains form the superchains.
    :param num_superchains: :math:`K \ge 2`, dividing the number of chains.
    :param var_names: variables to assess (default: all).
    """
    posterior = getattr(idata, "posterior", idata)
    if hasattr(posterior, "to_dataset") and not hasattr(posterior, "data_vars"):
        posterior = posterior.to_dataset()  # ArviZ 1.x DataTree node
    names = list(var_names) if var_names is not None else list(posterior.data_vars)
    missing = sorted(set(names) - set(posterior.data_vars))
    if missing:
        raise ValueError(f"var_names: not in the posterior: {missing}")
    out = {}
    for name in names:
        da = posterior[name].transpose("chain", "draw", ...)
        value = nested_rhat_array(da.values, num_superchains)
        out[name] = (da.dims[2:], value)
    coords = {d: posterior.coords[d] for d in posterior.coords if d not in ("chain", "draw")}
    return type(posterior)(out, coords=coords)
