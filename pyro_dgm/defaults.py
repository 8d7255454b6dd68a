"""Every default and choice list of the package's applications, as plain data.

The command line builds its parsers from this module alone (it imports neither torch nor
Pyro), and the comparison and the DLGM application read their defaults from here, so a
default is changed in one place.

Example::

    >>> from pyro_dgm.defaults import COMPARE_RUN
    >>> COMPARE_RUN["quick"]["num_steps"]
    500
"""

from __future__ import annotations

__all__ = [
    "COMPARE_HMC_RUN",
    "COMPARE_METHODS",
    "COMPARE_MODEL",
    "COMPARE_REFERENCE",
    "COMPARE_RUN",
    "DLGM_BINARIZE",
    "DLGM_DATASETS",
    "DLGM_ESTIMATORS",
    "DLGM_GUIDES",
    "DLGM_LIKELIHOODS",
    "DLGM_OBJECTIVES",
    "DISTRIBUTED_TIMEOUT",
    "DTYPE_NAMES",
    "MAP_LBFGS_ITERATIONS",
    "MAP_STARTS",
    "NESTED_RHAT_MIN_CHAINS",
    "NESTED_RHAT_SUPERCHAINS",
    "SVI_TOLERANCE",
    "SVI_WINDOW",
]

#: floating-point dtypes accepted by name (``--dtype``, run configs)
DTYPE_NAMES = ("float32", "float64")

# --- pyro-dgm compare --------------------------------------------------------------------
#: model of ``pyro-dgm compare`` when none is named
COMPARE_MODEL = "fa"
#: methods of ``pyro-dgm compare`` when none are named (``nuts``, Pyro's NUTS, stays
#: available by name)
COMPARE_METHODS = ("hmc", "meanfield", "fullrank", "laplace")
#: reference method the others are compared with: ChEES-HMC, 64 chains in lockstep
COMPARE_REFERENCE = "hmc"
#: run sizes: MCMC chains x (warm-up + draws) and SVI steps, for a full and a quick run
#: (quick: chains start at the MAP point, so 100 warm-up steps suffice); a method without
#: a warm-up setting warms up for as many steps as it keeps draws
COMPARE_RUN = {
    "full": {"num_samples": 1000, "num_warmup": 1000, "num_chains": 4, "num_steps": 5000},
    "quick": {"num_samples": 150, "num_warmup": 100, "num_chains": 2, "num_steps": 500},
}
#: run sizes of the ``hmc`` method (ChEES-HMC, many short chains in lockstep): chains x
#: (warm-up + draws), used where the run's MCMC sizes are the defaults above (a caller who
#: sets sizes gets those, with at least ``num_chains`` of these chains); draws >= chains
#: keeps ArviZ from warning. Warm-up starts from the Laplace metric at the MAP point, so 100
#: steps give the quick run nested R-hat 1.003 on the default job
COMPARE_HMC_RUN = {
    "full": {"num_chains": 64, "num_warmup": 300, "num_samples": 150},
    "quick": {"num_chains": 64, "num_warmup": 100, "num_samples": 64},
}
#: SVI convergence rule of the comparison's VI methods: every ``SVI_WINDOW`` steps, stop
#: when the mean loss of the last window changed by at most ``SVI_TOLERANCE`` (relative)
#: against the window before (then one cool-down window decays the rate); ``num_steps``
#: above is the cap. On the default job: 2,000 (mean-field), 3,750 (full-rank) steps
SVI_WINDOW = 250
SVI_TOLERANCE = 3e-5
#: an MCMC posterior with at least this many chains also gets nested R-hat in the report
NESTED_RHAT_MIN_CHAINS = 16
#: superchains of nested R-hat (consecutive chains; a posterior's ``num_superchains``
#: attribute overrides it)
NESTED_RHAT_SUPERCHAINS = 8
#: L-BFGS iterations (at most) of each MAP fit that starts MCMC chains
MAP_LBFGS_ITERATIONS = 500
#: MAP fits (prior median, then prior draws) whose best point starts the chains
MAP_STARTS = 4

# --- pyro-dgm train / evaluate (deep latent Gaussian models) -----------------------------
DLGM_OBJECTIVES = ("elbo", "iwae", "perturbative")
DLGM_ESTIMATORS = ("iwae", "stl", "dreg")
DLGM_GUIDES = ("gaussian", "planar", "radial", "iaf", "realnvp")
DLGM_DATASETS = ("digits", "digits-continuous")
DLGM_LIKELIHOODS = ("bernoulli", "gaussian")
DLGM_BINARIZE = ("dynamic", "fixed")

# --- pyro-dgm train --distributed ---------------------------------------------------------
#: seconds a process waits in a collective for the others before it stops and names the
#: stuck rank (``--timeout``; torch's own default is 300 s)
DISTRIBUTED_TIMEOUT = 60.0
