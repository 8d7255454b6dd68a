"""Methods of ``pyro-dgm compare`` for this package's variational objectives.

- ``iwae``: a full-rank Gaussian guide (``AutoMultivariateNormal``) trained on the IWAE
  bound with :data:`IWAE_PARTICLES` particles and DReG gradients; draws from the guide;
- ``iwae-sir``: the same training, then sampling-importance-resampled draws
  (:func:`~pyro_dgm.inference.importance_resample`, :data:`IWAE_PARTICLES` guide samples per
  draw): the posterior the IWAE bound implies, closer to the exact one than the guide;
- ``perturbative``: a mean-field guide (``AutoNormal``) trained on the perturbative bound of
  order 3 with :data:`PERTURBATIVE_PARTICLES` particles; draws from the guide. Compare it
  with ``meanfield`` (the same guide under KL): the paper's claim is mass covering, posterior
  standard deviations closer to the reference than KL-VI's.

Models with global latents (every built-in FA problem) get the whole-data bound.

Example::

    pyro-dgm compare --model fa --methods nuts,meanfield,perturbative,iwae,iwae-sir --quick
"""

from __future__ import annotations

from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_median

from pyro_dgm.compare.export import to_inference_data
from pyro_dgm.compare.methods.fitting import export_guide, fit_svi, vi_draws
from pyro_dgm.compare.registry import register_method
from pyro_dgm.compare.settings import Problem, Settings
from pyro_dgm.inference.iwae import IWAE, importance_resample
from pyro_dgm.inference.model_info import model_info
from pyro_dgm.inference.perturbative import PerturbativeELBO

__all__ = ["IWAE_PARTICLES", "PERTURBATIVE_PARTICLES"]

#: particles of the IWAE bound and guide samples per SIR draw
IWAE_PARTICLES = 8
#: particles of the perturbative bound
PERTURBATIVE_PARTICLES = 16


def _fit_iwae(problem: Problem, settings: Settings):
    guide = AutoMultivariateNormal(problem.model, init_loc_fn=init_to_median, init_scale=0.05)
    loss = IWAE(IWAE_PARTICLES, estimator="dreg", vectorize_particles=problem.vectorizable,
                max_plate_nesting=problem.max_plate_nesting)
    steps = len(fit_svi(problem, guide, settings, loss=loss, desc="iwae"))
    return guide, steps


@register_method("iwae", kind="vi",
                 description=f"full-rank Gaussian guide on the IWAE bound (K={IWAE_PARTICLES}, "
                 "DReG)")
def run_iwae(problem: Problem, settings: Settings):
    guide, steps = _fit_iwae(problem, settings)
    return export_guide(problem, guide, settings,
                        {"objective": f"IWAE(K={IWAE_PARTICLES}, dreg)", "svi_steps": steps})


@register_method("iwae-sir", kind="vi",
                 description="IWAE-trained guide, sampling-importance-resampled draws "
                 f"(K={IWAE_PARTICLES})")
def run_iwae_sir(problem: Problem, settings: Settings):
    if not problem.vectorizable:
        raise ValueError("iwae-sir draws particles as one vectorized trace; the problem's "
                         "model does not broadcast over a leading dimension")
    guide, steps = _fit_iwae(problem, settings)
    num = vi_draws(settings)
    draws = importance_resample(problem.model, guide, *problem.args, num_samples=num,
                                num_particles=IWAE_PARTICLES,
                                max_plate_nesting=problem.max_plate_nesting, **problem.kwargs)
    info = model_info(problem.model, problem.args, problem.kwargs)
    posterior = {name: draws[name].reshape((1, num) + shape)
                 for name, shape in info.latent.items()}
    attrs = {"inference_kind": "vi", "guide": "importance-resampled AutoMultivariateNormal",
             "objective": f"IWAE(K={IWAE_PARTICLES}, dreg)", "sir_particles": IWAE_PARTICLES,
             "svi_steps": steps}
    return to_inference_data(posterior, info, model=problem.model, args=problem.args,
                             kwargs=problem.kwargs, attrs=attrs)


@register_method("perturbative", kind="vi",
                 description="mean-field Gaussian guide on the perturbative bound (order 3, "
                 f"{PERTURBATIVE_PARTICLES} particles)")
def run_perturbative(problem: Problem, settings: Settings):
    guide = AutoNormal(problem.model, init_loc_fn=init_to_median, init_scale=0.05)
    loss = PerturbativeELBO(order=3, num_particles=PERTURBATIVE_PARTICLES,
                            vectorize_particles=problem.vectorizable,
                            max_plate_nesting=problem.max_plate_nesting)
    steps = len(fit_svi(problem, guide, settings, loss=loss, desc="perturbative"))
    return export_guide(problem, guide, settings, {
        "objective": f"PerturbativeELBO(order=3, S={PERTURBATIVE_PARTICLES})",
        "svi_steps": steps})
