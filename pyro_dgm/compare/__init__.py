"""The comparison: export MCMC and VI posteriors to ArviZ and compare them side by side.

This package sits on top of :mod:`pyro_dgm.models` and :mod:`pyro_dgm.inference` (see
``docs/architecture.md``):

- :func:`from_mcmc`, :func:`from_guide`: ``arviz.InferenceData`` with the same groups and
  shapes for a :class:`pyro.infer.MCMC` run and for a trained guide;
- :func:`compare_posteriors`, :func:`summarize`: tables against a reference posterior;
- :func:`nested_rhat`: convergence of many short chains started in groups;
- :func:`plot_posteriors`, :func:`plot_sd_ratios`: figures;
- :func:`psis_diagnostic`, :func:`psis_resample`, :func:`psis_verdict`: can a VI posterior
  be trusted without a reference (PSIS k-hat) and its PSIS-corrected draws;
- :func:`run_comparison`: the whole job behind ``pyro-dgm compare``, over the models and
  methods of :mod:`~pyro_dgm.compare.registry` (built-ins in
  :mod:`~pyro_dgm.compare.problems` and :mod:`~pyro_dgm.compare.methods`, registered when
  this package is imported), or a model function of your own (:func:`file_model`).
"""

from pyro_dgm.compare import methods, problems  # noqa: F401  (fill the registry)
from pyro_dgm.compare.export import (
    UntrainedGuideWarning,
    from_guide,
    from_mcmc,
    to_inference_data,
)
from pyro_dgm.compare.nested_rhat import nested_rhat
from pyro_dgm.compare.plots import plot_posteriors, plot_sd_ratios
from pyro_dgm.compare.problems.user import file_model
from pyro_dgm.compare.psis import psis_diagnostic, psis_resample, psis_summary, psis_verdict
from pyro_dgm.compare.registry import (
    METHODS,
    MODELS,
    Problem,
    Settings,
    register_method,
    register_model,
)
from pyro_dgm.compare.report import REFERENCE_ROW, compare_posteriors, summarize
from pyro_dgm.compare.runner import (
    DEFAULT_METHODS,
    ComparisonResult,
    default_settings,
    run_comparison,
)

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "MODELS",
    "REFERENCE_ROW",
    "ComparisonResult",
    "Problem",
    "Settings",
    "UntrainedGuideWarning",
    "compare_posteriors",
    "default_settings",
    "file_model",
    "from_guide",
    "from_mcmc",
    "nested_rhat",
    "plot_posteriors",
    "plot_sd_ratios",
    "psis_diagnostic",
    "psis_resample",
    "psis_summary",
    "psis_verdict",
    "register_method",
    "register_model",
    "run_comparison",
    "summarize",
    "to_inference_data",
]
