r"""The configuration of a DLGM training run and the data it names.

:class:`TrainConfig` holds everything a run depends on; it is stored in every checkpoint as
a plain dict and read back by :meth:`TrainConfig.from_dict`. The choice lists are those of
:mod:`pyro_dgm.defaults` (the command line offers the same ones without importing torch).

:func:`load_data` gives the rows of a split. With dynamic binarization the training images
of epoch :math:`e` are drawn from a generator seeded by :math:`(\text{seed}, e)` and the test
set is binarized once with a fixed seed, so a resumed run sees exactly the data a straight
run would.

Example::

    >>> cfg = TrainConfig(latent_dims=[10], objective="iwae", k=5).validate()
    >>> x = load_data(cfg, epoch=0, split="train")        # (1500, 64) binary images
    >>> x_test = load_data(cfg, split="test")             # (297, 64), the same every run
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from pyro_dgm._dtypes import to_dtype
from pyro_dgm._validation import check_choice, check_int, check_positive
from pyro_dgm.defaults import (
    DLGM_BINARIZE,
    DLGM_DATASETS,
    DLGM_ESTIMATORS,
    DLGM_GUIDES,
    DLGM_LIKELIHOODS,
    DLGM_OBJECTIVES,
    DTYPE_NAMES,
)

__all__ = ["BINARIZE", "DATASETS", "ESTIMATORS", "LIKELIHOODS", "OBJECTIVES", "TrainConfig",
           "check_device", "load_data"]

#: training objectives: ``Trace_ELBO``, :class:`~pyro_dgm.inference.IWAE`,
#: :class:`~pyro_dgm.inference.PerturbativeELBO`
OBJECTIVES = DLGM_OBJECTIVES
#: gradient estimators of the IWAE objective
ESTIMATORS = DLGM_ESTIMATORS
#: data sets: binarized digits, or standardized continuous digits (Gaussian likelihood)
DATASETS = DLGM_DATASETS
#: likelihoods of :class:`~pyro_dgm.models.DLGM`
LIKELIHOODS = DLGM_LIKELIHOODS
#: binarization of the digits: fresh every epoch, or once by threshold
BINARIZE = DLGM_BINARIZE
_TEST_SEED = 20140101  # the one dynamic binarization of the test set


@dataclass
class TrainConfig:
    """Everything a run depends on (stored in every checkpoint as a dict).

    :param latent_dims: sizes of the stochastic layers, next to the data first.
    :param hidden_dims: hidden widths of every network.
    :param likelihood: one of :data:`LIKELIHOODS`.
    :param objective: one of :data:`OBJECTIVES`; ``k`` particles per data point.
    :param estimator: IWAE gradient estimator, one of :data:`ESTIMATORS`.
    :param order: order of the perturbative bound (odd).
    :param guide: one of :data:`~pyro_dgm.dlgm.guides.GUIDES`, ``num_flows`` flows per layer.
    :param epochs: total number of epochs (a resumed run continues up to it).
    :param data: one of :data:`DATASETS`; ``binarize`` one of :data:`BINARIZE`;
        ``max_rows`` keeps the first training rows.
    :param dtype: one of :data:`pyro_dgm.defaults.DTYPE_NAMES`.

    Example::

        >>> TrainConfig(latent_dims=[20, 10], guide="iaf", epochs=50).validate()
    """

    latent_dims: list[int] = field(default_factory=lambda: [10])
    hidden_dims: list[int] = field(default_factory=lambda: [100, 100])
    likelihood: str = "bernoulli"
    objective: str = "elbo"
    k: int = 1
    estimator: str = "iwae"
    order: int = 3
    guide: str = "gaussian"
    num_flows: int = 4
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    data: str = "digits"
    binarize: str = "dynamic"
    max_rows: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    model: str = "dlgm"

    def validate(self) -> TrainConfig:
        """Check every field; raise ``ValueError`` naming the first bad one."""
        if self.model != "dlgm":
            raise ValueError(f"model must be 'dlgm', got {self.model!r}")
        if not self.latent_dims:
            raise ValueError("latent_dims must list at least one latent layer size")
        self.latent_dims = [check_int("latent_dims", d, minimum=1) for d in self.latent_dims]
        self.hidden_dims = [check_int("hidden_dims", h, minimum=1) for h in self.hidden_dims]
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_choice("guide", self.guide, DLGM_GUIDES)
        check_choice("data", self.data, DATASETS)
        check_choice("binarize", self.binarize, BINARIZE)
        check_choice("dtype", self.dtype, DTYPE_NAMES)
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        if self.data == "digits-continuous" and self.likelihood != "gaussian":
            raise ValueError("data 'digits-continuous' (standardized) needs likelihood "
                             "'gaussian'")
        check_int("k", self.k, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_int("epochs", self.epochs, minimum=0)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("num_flows", self.num_flows, minimum=1)
        check_positive("lr", self.lr)
        if self.max_rows is not None:
            check_int("max_rows", self.max_rows, minimum=1)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The validated config of a stored dict; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"config: unknown field(s) {sorted(unknown)}")
        return cls(**d).validate()


def check_device(name: str, device: str | torch.device | None) -> str | None:
    """``device`` as a string if this machine has it (``None`` passes through).

    :raises ValueError: naming ``name``: an unknown device string, or CUDA/MPS that is not
        available here.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name}: unknown device {str(device)!r} (use cpu, cuda, cuda:N "
                         "or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {str(device)!r} but CUDA is not available on this "
                             "machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {str(device)!r} but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name}: {str(device)!r} but MPS is not available on this "
                             "machine")
    elif dev.type != "cpu":
        raise ValueError(f"{name}: device type {dev.type!r} is not supported (use cpu, cuda "
                         "or mps)")
    return str(device)


def load_data(config: TrainConfig, epoch: int | None = None,
              split: str = "train") -> torch.Tensor:
    """The ``split`` data of ``epoch`` (dynamic binarization: fresh per epoch, fixed test).

    Uses only its own generators, never the global random state.

    :param config: the run (data set, binarization, ``max_rows`` of the training split,
        seed, dtype and device).
    :param epoch: the epoch whose binarization to draw (``None``: the first).
    :param split: ``"train"`` or ``"test"``.
    """
    dtype, device = to_dtype(config.dtype), torch.device(config.device)
    rows = config.max_rows if split == "train" else None
    if config.data == "digits-continuous":
        from pyro_dgm.data.digits_standardized import load_digits_standardized

        return load_digits_standardized(split=split, max_rows=rows, dtype=dtype,
                                        device=device)
    from pyro_dgm.data import load_digits

    if config.binarize == "fixed":
        return load_digits(binarize="fixed", split=split, max_rows=rows, dtype=dtype,
                           device=device)
    probs = load_digits(binarize=None, split=split, max_rows=rows, dtype=dtype, device=device)
    seed = _TEST_SEED if split == "test" else config.seed * 100003 + (epoch or 0)
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.bernoulli(probs, generator=g)
