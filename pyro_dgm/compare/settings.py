"""What a comparison runs on (:class:`Problem`) and with which sizes (:class:`Settings`).

The sizes of a full and a quick run are :data:`pyro_dgm.defaults.COMPARE_RUN`;
:func:`default_settings` builds checked :class:`Settings` from them.

Example::

    >>> settings = default_settings(quick=True, seed=3)
    >>> settings.num_steps, settings.num_chains
    (500, 2)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_dgm._validation import check_int
from pyro_dgm.defaults import COMPARE_RUN

__all__ = ["Problem", "Settings", "default_settings", "num_threads", "num_warmup"]


@dataclass
class Problem:
    """A Pyro model together with the arguments (data) to condition it on."""

    name: str
    model: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    #: posterior variables compared in the report (default: every latent site)
    var_names: list[str] | None = None
    description: str = ""
    #: the model broadcasts over a leading particle/draw dimension
    vectorizable: bool = True
    #: plates nested in the model (for vectorized particles)
    max_plate_nesting: int = 1
    #: let NUTS compile the potential with the PyTorch JIT
    jit_compile: bool = False
    #: reference draws that come with the problem (an ``arviz.InferenceData`` whose
    #: posterior has the model's site names and shapes, e.g. posteriordb's), or ``None``
    reference: Any = None
    #: where ``reference`` came from, in words (the report prints it)
    reference_source: str = ""


@dataclass(frozen=True)
class Settings:
    """Run settings shared by every method (build them with :func:`default_settings`)."""

    quick: bool = False
    num_samples: int = COMPARE_RUN["full"]["num_samples"]
    num_warmup: int | None = None
    num_chains: int = COMPARE_RUN["full"]["num_chains"]
    num_steps: int = COMPARE_RUN["full"]["num_steps"]
    seed: int = 0
    device: str = "cpu"
    dtype: torch.dtype = torch.float64
    progress: bool = True
    #: torch intra-op threads for the comparison; ``None``: :func:`num_threads`' rule
    threads: int | None = None


def num_warmup(settings: Settings) -> int:
    """MCMC warm-up steps: ``settings.num_warmup``, else as many as the draws kept."""
    return settings.num_warmup if settings.num_warmup is not None else settings.num_samples


def num_threads(settings: Settings) -> int:
    """Torch threads of a comparison: ``settings.threads``, else the cores divided by the
    number of MCMC chains (Pyro runs one process per chain, each inheriting the setting;
    two processes with default threads on 2 cores run several times slower), at least 1."""
    if settings.threads is not None:
        return settings.threads
    return max(1, (os.cpu_count() or 1) // max(1, settings.num_chains))


def default_settings(quick: bool = False, **overrides) -> Settings:
    """Settings for a full run, or a ``quick`` one (under a minute on 2 cores).

    Sizes from :data:`pyro_dgm.defaults.COMPARE_RUN` — full: 4 chains x (1,000 warm-up +
    1,000 draws), 5,000 SVI steps; quick: 2 chains x (100 + 150: the chains start at the MAP
    point), 500 SVI steps. ``overrides`` that are ``None`` keep the default.
    """
    base = dict(COMPARE_RUN["quick" if quick else "full"])
    base.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(quick=quick, **base)
    check_int("num_samples", settings.num_samples, minimum=1)
    check_int("num_warmup", settings.num_warmup, minimum=0)
    check_int("num_chains", settings.num_chains, minimum=1)
    check_int("num_steps", settings.num_steps, minimum=1)
    check_int("seed", settings.seed, minimum=0)
    if settings.threads is not None:
        check_int("threads", settings.threads, minimum=1)
    try:
        device = torch.device(settings.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: unknown device {settings.device!r}; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA is not available on this machine")
    return settings
