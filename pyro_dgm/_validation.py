"""Argument checks shared by the whole package.

Every public entry point validates its arguments up front and raises :class:`ValueError`
naming the offending argument or sample site, rather than letting a bad value turn into a
silent ``NaN`` several calls later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = [
    "check_choice",
    "check_finite_tensor",
    "check_int",
    "check_positive",
    "check_probability",
    "check_matrix",
]


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        if as_int != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = as_int
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_positive(name: str, value: float, *, strict: bool = True) -> float:
    """Return ``float(value)`` if it is finite and positive (``>= 0`` when not strict)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def check_probability(name: str, value: float, *, open_right: bool = True) -> float:
    """Return ``float(value)`` if it lies in ``(0, 1)`` (``(0, 1]`` if not ``open_right``)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    upper_ok = value < 1 if open_right else value <= 1
    if not (value > 0 and upper_ok):
        interval = "(0, 1)" if open_right else "(0, 1]"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; the error lists the valid ones."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, choices))}")
    return value


def check_finite_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` if ``value`` holds NaN or infinite entries.

    This synchronizes with the device, so call it once on input data, never in a hot loop.
    """
    if not torch.is_tensor(value):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            count = int(bad.sum())
            raise ValueError(f"{name} contains {count} non-finite value(s) (NaN or inf)")
    return value


def check_matrix(name: str, value: torch.Tensor, *, columns: int | None = None) -> torch.Tensor:
    """Check that ``value`` is a finite 2-D tensor, optionally with ``columns`` columns."""
    if not torch.is_tensor(value):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be 2-dimensional (rows, columns), got shape "
                         f"{tuple(value.shape)}")
    if columns is not None and value.shape[-1] != columns:
        raise ValueError(f"{name} must have {columns} columns, got {value.shape[-1]}")
    return check_finite_tensor(name, value)
