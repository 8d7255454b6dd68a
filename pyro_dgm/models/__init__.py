"""Generative models written as Pyro programs."""

from pyro_dgm._shared import data_plate
from pyro_dgm.models.bayesian_mlp import BayesianMLP
from pyro_dgm.models.dlgm import DLGM, DLGMGuide
from pyro_dgm.models.fa_exact import ExactPosteriorGuide, fa_posterior
from pyro_dgm.models.fa_marginal import FAMarginal, fa_log_marginal
from pyro_dgm.models.factor_analysis import FactorAnalysis, FAData
from pyro_dgm.models.gaussian_mixture import GaussianMixture, MixtureData, SortedNormal
from pyro_dgm.models.rbm import RBM

__all__ = [
    "BayesianMLP",
    "DLGM",
    "DLGMGuide",
    "ExactPosteriorGuide",
    "FAData",
    "FAMarginal",
    "FactorAnalysis",
    "GaussianMixture",
    "MixtureData",
    "RBM",
    "SortedNormal",
    "data_plate",
    "fa_log_marginal",
    "fa_posterior",
]

# the 2-D energy targets U1-U4 of Rezende & Mohamed (2015)
from pyro_dgm.models.energy import EnergyTarget, energy_kl, energy_log_z  # noqa: E402

__all__ += ["EnergyTarget", "energy_kl", "energy_log_z"]
