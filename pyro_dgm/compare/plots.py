"""Plots of several posteriors side by side (ArviZ forest plots, overlaid marginals).

Example::

    >>> fig = plot_posteriors({"NUTS": idata_nuts, "ADVI": idata_advi}, kind="forest")
    >>> fig.savefig("forest.png")
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import matplotlib

from pyro_dgm._validation import check_choice
from pyro_dgm.compare._arviz import arviz

__all__ = ["plot_posteriors", "plot_sd_ratios"]


def _pyplot():
    if matplotlib.get_backend().lower() not in {"agg", "module://matplotlib_inline.backend_inline"}:
        import os

        if not os.environ.get("DISPLAY"):
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_posteriors(
    idatas: Mapping[str, object],
    *,
    var_names: Sequence[str] | None = None,
    kind: str = "forest",
    hdi_prob: float = 0.94,
):
    """Overlay the posteriors of several methods in one figure.

    :param idatas: method name -> ``InferenceData``.
    :param var_names: variables to show (default: all shared ones).
    :param kind: ``"forest"`` (ArviZ forest plot, one interval per method) or ``"density"``
        (overlaid marginal densities).
    :return: the ``matplotlib.figure.Figure``.
    """
    check_choice("kind", kind, ["forest", "density"])
    _pyplot()
    names = list(idatas)
    data = [idatas[n] for n in names]
    if var_names is None:
        var_names = sorted(set.intersection(*[set(d.posterior.data_vars) for d in data]))
    with warnings.catch_warnings():
        # a posterior whose draws are all equal (e.g. PSIS-resampled with degenerate
        # weights) is drawn as a spike; ArviZ's KDE says so with a UserWarning
        warnings.filterwarnings("ignore", message="Your data appears to have a single value",
                                category=UserWarning)
        if kind == "forest":
            axes = arviz.plot_forest(data, model_names=names, var_names=list(var_names),
                                     combined=True, hdi_prob=hdi_prob, show=False)
        else:
            axes = arviz.plot_density(data, data_labels=names, var_names=list(var_names),
                                      hdi_prob=hdi_prob, shade=0.1, show=False)
    ax = axes.ravel()[0] if hasattr(axes, "ravel") else axes
    for each in ax.figure.axes:
        # legend loc="best" scans every plotted point on each draw: very slow for KDEs
        legend = each.get_legend()
        if legend is not None:
            legend.set_loc("upper right")
    return ax.figure


def plot_sd_ratios(table, *, reference: str | None = None):
    """Strip plot of ``sd_ratio`` per method (1 = the reference's spread).

    :param table: the output of :func:`~pyro_dgm.compare.compare_posteriors`.
    """
    plt = _pyplot()
    methods = [m for m in table["method"].unique() if m != reference]
    fig, ax = plt.subplots(figsize=(6, 0.6 * len(methods) + 1.5))
    for i, method in enumerate(methods):
        ratios = table.loc[table["method"] == method, "sd_ratio"].to_numpy()
        ax.scatter(ratios, [i] * len(ratios), alpha=0.5, s=14)
    ax.axvline(1.0, color="k", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel(f"posterior sd / sd of {reference or 'reference'}")
    ax.set_title("Spread of each marginal relative to the reference")
    fig.tight_layout()
    return fig
