"""Objectives, guides and MCMC kernels that plug into Pyro's ``SVI`` and ``MCMC``.

MCMC:

- :class:`ChEESHMC`: HMC with all chains in lockstep, ChEES trajectory-length adaptation;
- :class:`RandomWalkMH`: adaptive random-walk Metropolis–Hastings (step size towards
  acceptance 0.234, proposal covariance from warm-up draws);
- :class:`Gibbs`: Gibbs sampling with exact conditionals of discrete sites, MH within Gibbs
  for continuous sites, or user conditionals;
- :class:`MCMC`: :class:`pyro.infer.MCMC` with ``chain_method="vectorized"`` (all chains
  as one batch);
- :func:`mh_step`: the one Metropolis accept/reject step both kernels use (state in,
  state and per-step info out).

Objectives for :class:`pyro.infer.SVI` (each also an ``nn.Module`` via ``objective(model,
guide)``) and evaluation (``docs/objectives.md``):

- :class:`IWAE`: importance-weighted bound per data point, unbiased under subsampling, with
  IWAE, STL and DReG gradient estimators; :func:`importance_resample` draws from the
  posterior it implies;
- :class:`PerturbativeELBO`: the perturbative bound of Bamler et al. (2017), odd order,
  closed-form reference energy;
- :func:`log_marginal_likelihood`: importance-sampled log p(x) per data point, chunked.

Pathfinder (``docs/pathfinder.md``): :class:`Pathfinder`, an autoguide fitted by L-BFGS paths
with the quasi-Newton Gaussian of Zhang et al. (2022); :func:`init_to_pathfinder`, an MCMC
start drawn from it; :func:`psis_smooth`, Pareto-smoothed importance weights and k-hat.

Compiled steps: :func:`compile_loss` wraps any objective so that its steps run as one
captured graph of (parameters, data) -> (loss, gradients), without Pyro's per-step Python
(:class:`CompiledELBO`, ``docs/performance.md``).

Guides: :class:`FlowGuide` (normalizing flow over all latents) and
:class:`AmortizedFlowGuide` (encoder + conditional planar/radial/IAF/Real NVP flows for
local latents), see ``docs/flows.md``.
"""

from pyro_dgm.inference._particles import BiasedSubsampleWarning, NonFiniteLossError
from pyro_dgm.inference.adaptation import ProposalAdapter, ProposalState, adaptation_windows
from pyro_dgm.inference.chain_health import ChainHealthWarning
from pyro_dgm.inference.chain_model import ChainModel, NotVectorizable
from pyro_dgm.inference.chees import ChEESHMC
from pyro_dgm.inference.chees_adaptation import ChEESAdapter, ChEESInfo, ChEESState
from pyro_dgm.inference.compiled import CompiledELBO, CompileFallbackWarning, compile_loss
from pyro_dgm.inference.flows import (
    AmortizedFlowGuide,
    FlowDistribution,
    FlowGuide,
    NotInvertibleError,
)
from pyro_dgm.inference.gibbs import Gibbs
from pyro_dgm.inference.iwae import IWAE, importance_resample
from pyro_dgm.inference.log_likelihood import LogLikelihood, log_marginal_likelihood
from pyro_dgm.inference.mcmc import MCMC, VectorizedKernel
from pyro_dgm.inference.metropolis import MHInfo, MHState, mh_step
from pyro_dgm.inference.model_info import ModelInfo, model_info
from pyro_dgm.inference.pathfinder import Pathfinder, init_to_pathfinder
from pyro_dgm.inference.perturbative import PerturbativeELBO
from pyro_dgm.inference.psis import psis_smooth
from pyro_dgm.inference.random_walk_mh import RandomWalkMH

__all__ = [
    "CompileFallbackWarning",
    "CompiledELBO",
    "compile_loss",
    "AmortizedFlowGuide",
    "BiasedSubsampleWarning",
    "ChEESAdapter",
    "ChEESHMC",
    "ChEESInfo",
    "ChEESState",
    "ChainHealthWarning",
    "ChainModel",
    "FlowDistribution",
    "FlowGuide",
    "Gibbs",
    "IWAE",
    "LogLikelihood",
    "MCMC",
    "MHInfo",
    "MHState",
    "ModelInfo",
    "NonFiniteLossError",
    "NotInvertibleError",
    "NotVectorizable",
    "Pathfinder",
    "PerturbativeELBO",
    "ProposalAdapter",
    "ProposalState",
    "RandomWalkMH",
    "VectorizedKernel",
    "adaptation_windows",
    "importance_resample",
    "init_to_pathfinder",
    "log_marginal_likelihood",
    "mh_step",
    "model_info",
    "psis_smooth",
]
