"""Objectives, guides and MCMC kernels that plug into Pyro's ``SVI`` and ``MCMC``.

MCMC:

- :class:`RandomWalkMH`: adaptive random-walk Metropolis–Hastings (step size towards
  acceptance 0.234, proposal covariance from warm-up draws);
- :class:`Gibbs`: Gibbs sampling with exact conditionals of discrete sites, MH within Gibbs
  for continuous sites, or user conditionals;
- :class:`MCMC`: :class:`pyro.infer.MCMC` with ``chain_method="vectorized"`` (all chains
  as one batch).

Objectives for :class:`pyro.infer.SVI` (each also an ``nn.Module`` via ``objective(model,
guide)``) and evaluation (``docs/objectives.md``):

- :class:`IWAE`: importance-weighted bound per data point, unbiased under subsampling, with
  IWAE, STL and DReG gradient estimators; :func:`importance_resample` draws from the
  posterior it implies;
- :class:`PerturbativeELBO`: the perturbative bound of Bamler et al. (2017), odd order,
  closed-form reference energy;
- :func:`log_marginal_likelihood`: importance-sampled log p(x) per data point, chunked.
"""

from pyro_dgm.inference.adaptation import ProposalAdapter, ProposalState, adaptation_windows
from pyro_dgm.inference.chain_model import ChainModel, NotVectorizable
from pyro_dgm.inference.gibbs import Gibbs
from pyro_dgm.inference.mcmc import MCMC, VectorizedKernel
from pyro_dgm.inference.random_walk_mh import RandomWalkMH

__all__ = [
    "MCMC",
    "ChainModel",
    "Gibbs",
    "NotVectorizable",
    "ProposalAdapter",
    "ProposalState",
    "RandomWalkMH",
    "VectorizedKernel",
    "adaptation_windows",
]

# normalizing-flow guides (planar, radial, IAF, Real NVP): global and amortized
from pyro_dgm.inference.flows import (  # noqa: E402
    AmortizedFlowGuide,
    FlowDistribution,
    FlowGuide,
    NotInvertibleError,
)

__all__ += ["AmortizedFlowGuide", "FlowDistribution", "FlowGuide", "NotInvertibleError"]

# importance-weighted and perturbative objectives, importance-sampled log-likelihoods
from pyro_dgm.inference._particles import (  # noqa: E402
    BiasedSubsampleWarning,
    NonFiniteLossError,
)
from pyro_dgm.inference.iwae import IWAE, importance_resample  # noqa: E402
from pyro_dgm.inference.log_likelihood import (  # noqa: E402
    LogLikelihood,
    log_marginal_likelihood,
)
from pyro_dgm.inference.perturbative import PerturbativeELBO  # noqa: E402

__all__ += ["IWAE", "BiasedSubsampleWarning", "LogLikelihood", "NonFiniteLossError",
            "PerturbativeELBO", "importance_resample", "log_marginal_likelihood"]
