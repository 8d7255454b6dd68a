"""The ArviZ bridge: export MCMC and VI posteriors and compare them side by side.

- :func:`from_mcmc`, :func:`from_guide`: ``arviz.InferenceData`` with the same groups and
  shapes for a :class:`pyro.infer.MCMC` run and for a trained guide;
- :func:`compare_posteriors`, :func:`summarize`: tables against a reference posterior;
- :func:`plot_posteriors`, :func:`plot_sd_ratios`: figures;
- :func:`run_comparison`: the whole job behind ``pyro-dgm compare``.
"""

from pyro_dgm.compare.export import from_guide, from_mcmc, to_inference_data
from pyro_dgm.compare.plots import plot_posteriors, plot_sd_ratios
from pyro_dgm.compare.report import compare_posteriors, summarize
from pyro_dgm.compare.runner import (
    DEFAULT_METHODS,
    ComparisonResult,
    default_settings,
    run_comparison,
)

__all__ = [
    "DEFAULT_METHODS",
    "ComparisonResult",
    "compare_posteriors",
    "default_settings",
    "from_guide",
    "from_mcmc",
    "plot_posteriors",
    "plot_sd_ratios",
    "run_comparison",
    "summarize",
    "to_inference_data",
]
