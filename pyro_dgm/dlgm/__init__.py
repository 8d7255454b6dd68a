r"""The deep latent Gaussian model application: train, resume, evaluate, impute.

The model and its Gaussian recognition model are :class:`pyro_dgm.models.DLGM` and
:class:`pyro_dgm.models.DLGMGuide`; this package is what ``pyro-dgm train`` and
``pyro-dgm evaluate`` run:

- :mod:`~pyro_dgm.dlgm.config` — :class:`TrainConfig` and :func:`load_data`;
- :mod:`~pyro_dgm.dlgm.guides` — :func:`make_guide` (Gaussian or flow guides),
  :func:`build`, :func:`build_objective`;
- :mod:`~pyro_dgm.dlgm.loop` — :func:`train` and :class:`TrainResult`;
- :mod:`~pyro_dgm.dlgm.strategy` — :class:`Strategy`, :class:`LocalStrategy` (the
  data-parallel one is :class:`pyro_dgm.distributed.DDPStrategy`);
- :mod:`~pyro_dgm.dlgm.checkpoint` — atomic checkpoints, :func:`resume_point` (the one
  reader of a run to resume) and :func:`load_trained`;
- :mod:`~pyro_dgm.dlgm.evaluation` — :math:`\mathcal L_{5000}`, ELBO, active units, bits
  per layer, imputation, :func:`evaluate_run`.

Layering: this package uses :mod:`pyro_dgm.models`, :mod:`pyro_dgm.inference`,
:mod:`pyro_dgm.data` and the private helpers below them, never :mod:`pyro_dgm.distributed`,
:mod:`pyro_dgm.compare` or :mod:`pyro_dgm.cli` (``docs/architecture.md``).

Example::

    >>> from pyro_dgm.dlgm import TrainConfig, evaluate_run, train
    >>> result = train(TrainConfig(latent_dims=[10], objective="iwae", k=5, epochs=20),
    ...                "runs/iwae5")
    >>> evaluate_run("runs/iwae5", num_samples=500)["test_log_likelihood"]
"""

from pyro_dgm.dlgm.checkpoint import (
    capture_rng_state,
    checkpoint_paths,
    load_checkpoint,
    load_trained,
    restore_rng_state,
    resume_point,
    save_checkpoint,
)
from pyro_dgm.dlgm.config import (
    DATASETS,
    ESTIMATORS,
    LIKELIHOODS,
    OBJECTIVES,
    TrainConfig,
    load_data,
)
from pyro_dgm.dlgm.evaluation import (
    active_units,
    bits_per_dim,
    evaluate_run,
    impute,
    khat_histogram,
    pointwise_khat,
    quadrature_log_likelihood,
    save_image_grid,
    test_elbo,
    test_log_likelihood,
)
from pyro_dgm.dlgm.guides import GUIDES, build, build_objective, make_guide
from pyro_dgm.dlgm.loop import PLOT_EVERY, TrainResult, train
from pyro_dgm.dlgm.strategy import LocalStrategy, Strategy

__all__ = [
    "DATASETS",
    "ESTIMATORS",
    "GUIDES",
    "LIKELIHOODS",
    "LocalStrategy",
    "OBJECTIVES",
    "PLOT_EVERY",
    "Strategy",
    "TrainConfig",
    "TrainResult",
    "active_units",
    "bits_per_dim",
    "build",
    "build_objective",
    "capture_rng_state",
    "checkpoint_paths",
    "evaluate_run",
    "impute",
    "khat_histogram",
    "pointwise_khat",
    "load_checkpoint",
    "load_data",
    "load_trained",
    "make_guide",
    "quadrature_log_likelihood",
    "restore_rng_state",
    "resume_point",
    "save_checkpoint",
    "save_image_grid",
    "test_elbo",
    "test_log_likelihood",
    "train",
]
