"""Bayes-by-Backprop layers for existing PyTorch networks (Blundell et al. 2015).

- :mod:`pyro_dgm.nn.priors`: Gaussian, scale-mixture (log space) and any-distribution priors;
- :mod:`pyro_dgm.nn.bayes_layers`: ``BayesLinear``, ``BayesConv1d/2d/3d`` with the
  ``"reparam"``, ``"local"`` and ``"flipout"`` estimators;
- :mod:`pyro_dgm.nn.bayesianize`: ``bayesianize(net, ...)`` swaps Linear/Conv layers;
- :mod:`pyro_dgm.nn.training`: ``kl_divergence``, ``bbb_loss``, ``predict``.
"""

from pyro_dgm._shared import inverse_softplus
from pyro_dgm.nn.bayes_layers import (
    ESTIMATORS,
    BayesConv1d,
    BayesConv2d,
    BayesConv3d,
    BayesLayer,
    BayesLinear,
)
from pyro_dgm.nn.bayesianize import bayesianize
from pyro_dgm.nn.priors import (
    PRIORS,
    DistributionPrior,
    GaussianPrior,
    ScaleMixturePrior,
    WeightPrior,
    make_prior,
)
from pyro_dgm.nn.training import (
    ClassificationPrediction,
    RegressionPrediction,
    bayes_layers,
    bbb_loss,
    blundell_kl_weight,
    kl_divergence,
    predict,
    use_posterior_mean,
)

__all__ = [
    "ESTIMATORS",
    "PRIORS",
    "BayesConv1d",
    "BayesConv2d",
    "BayesConv3d",
    "BayesLayer",
    "BayesLinear",
    "ClassificationPrediction",
    "DistributionPrior",
    "GaussianPrior",
    "RegressionPrediction",
    "ScaleMixturePrior",
    "WeightPrior",
    "bayes_layers",
    "bayesianize",
    "bbb_loss",
    "blundell_kl_weight",
    "inverse_softplus",
    "kl_divergence",
    "make_prior",
    "predict",
    "use_posterior_mean",
]
