"""Built-in models of ``pyro-dgm compare``.

- ``fa`` (default): Bayesian factor analysis with two factors of scikit-learn's bundled wine
  data (178 x 13, standardized), the factors integrated out analytically so every method
  sees the posterior of the loadings, noise variances and means (51 dimensions);
- ``fa-local``: the same model with the 178 x 2 local factors kept as latent sites (the
  report compares the global parameters);
- ``fa-synthetic``: data simulated from known parameters (300 x 6, two factors).

Columns are reordered so that the leading variables of the lower-triangular loadings load
strongly on their factors (:meth:`FactorAnalysis.leader_order`); otherwise a factor's sign is
weakly identified and different methods settle in different modes.
"""

from __future__ import annotations

from pyro_dgm.compare.registry import register_model
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.data import load_tabular
from pyro_dgm.models import FactorAnalysis

__all__: list[str] = []

_FA_GLOBALS = ["W_diag", "W_lower", "psi", "loc"]


def _fa_problem(name, x, latent_dim, settings, *, marginalize, description):
    x = x[:, FactorAnalysis.leader_order(x, latent_dim)]
    model = FactorAnalysis(x.shape[1], latent_dim, marginalize_latents=marginalize,
                           dtype=settings.dtype).to(settings.device)
    return Problem(name, model, (x,), var_names=list(_FA_GLOBALS), description=description,
                   jit_compile=True)


@register_model("fa", description="Bayesian factor analysis (2 factors) of the wine data, "
                "factors marginalized")
def build_fa(settings: Settings) -> Problem:
    x = load_tabular("wine", dtype=settings.dtype, device=settings.device)
    return _fa_problem("fa", x, 2, settings, marginalize=True,
                       description="Bayesian FA, 2 factors, wine (178 x 13, standardized)")


@register_model("fa-local", description="Bayesian factor analysis of the wine data with "
                "local factors z_n as latent sites")
def build_fa_local(settings: Settings) -> Problem:
    x = load_tabular("wine", dtype=settings.dtype, device=settings.device)
    return _fa_problem("fa-local", x, 2, settings, marginalize=False,
                       description="Bayesian FA with local factors, wine (178 x 13)")


@register_model("fa-synthetic", description="Bayesian factor analysis of 300 x 6 synthetic "
                "data from known parameters")
def build_fa_synthetic(settings: Settings) -> Problem:
    generator = FactorAnalysis(6, 2, dtype=settings.dtype).to(settings.device)
    x = generator.simulate(300, seed=settings.seed).x
    return _fa_problem("fa-synthetic", x, 2, settings, marginalize=True,
                       description="Bayesian FA, 2 factors, synthetic 300 x 6")
