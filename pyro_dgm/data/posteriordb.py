"""Eight posteriors of posteriordb: data, reference draws and declarations.

posteriordb (Magnusson, Bürkner & Vehtari, "posteriordb: a set of posteriors for Bayesian
inference and probabilistic programming", stan-dev/posteriordb, BSD-3) pairs Stan models
with data and reference posterior draws. This module reads a *bundle* of eight of them,
written by ``dev/vendor_posteriordb.py`` from posteriordb at commit 28f8d3d:

- ``<posterior>.npz``: ``data.<name>`` per variable of the Stan ``data`` block, typed by
  its Stan declaration (``int`` -> ``int64``, every real type -> ``float64``, scalars as
  0-d arrays), and ``reference.<param>`` per variable of the ``parameters`` block: the
  reference draws thinned evenly from 10 chains x 1,000 to 10 chains x 100, shape
  ``(chains, draws, *declared_shape)``;
- ``manifest.json``: the data and parameter declarations (name, Stan type, dimensions)
  and the provenance. An entry whose draws were made here, not by posteriordb
  (``dev/reference_draws.py``, for a posterior posteriordb's snapshot has none for), says
  so in its ``reference_source`` (:func:`posteriordb_reference_source`); without that field
  the draws are posteriordb's.

The bundle is found at, in order: the directory named by the environment variable
``PYRO_DGM_POSTERIORDB``; ``pyro_dgm/data/posteriordb/`` (package data); a folder
``shared/posteriordb`` in any directory above this file (a checkout's ``shared/`` or the one
beside it). :func:`posteriordb_available` says whether one was found.

A parameter's draws are in Stan's constrained space: a ``real<lower=0>`` as the positive
number, a ``simplex[K]`` as its K components, a ``positive_ordered[K]`` as the K increasing
positive numbers — the values a Pyro model's sites take.

Example::

    >>> data = load_posteriordb_data("kidiq-kidscore_momiq")
    >>> data["N"].dtype, data["kid_score"].dtype
    (dtype('int64'), dtype('float64'))
    >>> load_posteriordb_reference("kidiq-kidscore_momiq")["beta"].shape
    (10, 100, 2)
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "ENV_VAR",
    "POSTERIORDB_URL",
    "StanParameter",
    "load_posteriordb_data",
    "load_posteriordb_reference",
    "load_posteriordb_stan_code",
    "parse_stan_index",
    "posteriordb_available",
    "posteriordb_dir",
    "posteriordb_has_reference",
    "posteriordb_names",
    "posteriordb_parameters",
    "posteriordb_reference_source",
]

#: environment variable naming the bundle directory
ENV_VAR = "PYRO_DGM_POSTERIORDB"
#: where the Stan programs are published (at the commit the bundle was built from)
POSTERIORDB_URL = ("https://github.com/stan-dev/posteriordb/blob/28f8d3d/"
                   "posterior_database/models/stan/{model}.stan")

_NAMES = (
    "arma-arma11",
    "earnings-logearn_interaction_z",
    "gp_pois_regr-gp_regr",
    "kidiq-kidscore_momiq",
    "mesquite-logmesquite_logvas",
    "nes2000-nes",
    "bball_drive_event_0-hmm_drive_0",
    "mcycle_gp-accel_gp",
)


class StanParameter(NamedTuple):
    """A variable of a Stan ``parameters`` block."""

    #: the Stan type without constraint: ``real``, ``vector``, ``simplex``, ...
    stan_type: str
    #: the declared bounds, e.g. ``"lower=0"`` (empty when none)
    constraint: str
    #: the declared shape, evaluated with the posterior's data
    shape: tuple[int, ...]


def posteriordb_names() -> list[str]:
    """The eight posteriors (``<data>-<model>``, posteriordb's names)."""
    return list(_NAMES)


def _candidates() -> list[Path]:
    here = Path(__file__).resolve().parent
    found = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    found.append(here / "posteriordb")
    found.extend(parent / "shared" / "posteriordb" for parent in here.parents)
    return found


def posteriordb_dir() -> Path:
    """The bundle directory (see the module docstring for the search order).

    :raises FileNotFoundError: when no candidate holds a ``manifest.json``.
    """
    for path in _candidates():
        if (path / "manifest.json").is_file():
            return path
    raise FileNotFoundError(
        "posteriordb: no bundle found (a directory with manifest.json); build one with "
        "`python dev/vendor_posteriordb.py PATH_TO_POSTERIORDB --out DIR` and set "
        f"{ENV_VAR}=DIR, or place it at shared/posteriordb")


def posteriordb_available() -> bool:
    """Whether a bundle can be found."""
    try:
        posteriordb_dir()
    except FileNotFoundError:
        return False
    return True


@lru_cache(maxsize=4)
def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _entry(name: str) -> tuple[Path, dict]:
    if name not in _NAMES:
        raise ValueError(f"posterior: unknown posteriordb posterior {name!r}; valid: "
                         f"{', '.join(_NAMES)}")
    directory = posteriordb_dir()
    posteriors = _manifest(directory)["posteriors"]
    if name not in posteriors:
        raise ValueError(f"posterior: {name!r} is not in the bundle at {directory}")
    return directory, posteriors[name]


@lru_cache(maxsize=16)
def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def _shape(dims: list[str], data: dict[str, np.ndarray], name: str) -> tuple[int, ...]:
    shape = []
    for d in dims:
        if d.isdigit():
            shape.append(int(d))
        elif d in data and data[d].ndim == 0 and data[d].dtype.kind in "iu":
            shape.append(int(data[d]))
        else:
            raise ValueError(f"posterior {name!r}: cannot evaluate the dimension {d!r}")
    return tuple(shape)


def load_posteriordb_data(name: str) -> dict[str, np.ndarray]:
    """The posterior's data, by the names of the Stan ``data`` block.

    :param name: one of :func:`posteriordb_names`.
    :returns: name -> ``int64`` array (Stan ``int``) or ``float64`` array (Stan ``real``,
        ``vector``, ``matrix``, ...), in the declared shape; scalars are 0-d arrays.
    :raises ValueError: naming ``name`` when it is not one of the eight.
    """
    directory, entry = _entry(name)
    arrays = _arrays(directory / f"{name}.npz")
    out = {}
    for decl in entry["data"]:
        value = arrays[f"data.{decl['name']}"]
        out[decl["name"]] = value.astype(np.int64 if decl["base"] == "int" else np.float64,
                                         copy=True)
    return out


def posteriordb_parameters(name: str) -> dict[str, StanParameter]:
    """The variables of the Stan ``parameters`` block, in declaration order.

    The shape is the declaration's, evaluated with the posterior's data (``vector[K]`` with
    ``K = 2`` -> ``(2,)``; ``real`` -> ``()``); ``real<lower=0> sigma`` is
    ``StanParameter("real", "lower=0", ())``.

    :raises ValueError: naming ``name`` when it is not one of the eight.
    """
    _, entry = _entry(name)
    data = load_posteriordb_data(name)
    return {d["name"]: StanParameter(d["stan_type"], d["constraint"],
                                     _shape(d["dims"], data, name))
            for d in entry["parameters"]}


def posteriordb_has_reference(name: str) -> bool:
    """Whether the bundle holds reference draws for ``name``."""
    return bool(_entry(name)[1]["has_reference"])


def posteriordb_reference_source(name: str) -> str | None:
    """Who made the bundle's reference draws of ``name``: the manifest entry's
    ``reference_source`` (draws not from posteriordb, e.g. ``dev/reference_draws.py``'s
    own sampler runs), or ``None`` when the draws are posteriordb's own (or there are none).

    :raises ValueError: naming ``name`` when it is not one of the eight.

    Example::

        >>> posteriordb_reference_source("kidiq-kidscore_momiq") is None  # posteriordb's
        True
    """
    entry = _entry(name)[1]
    return entry.get("reference_source") if entry["has_reference"] else None


def load_posteriordb_reference(name: str) -> dict[str, np.ndarray]:
    """The thinned reference draws, grouped by parameter.

    :param name: one of :func:`posteriordb_names`.
    :returns: parameter -> ``float64`` array of shape ``(chains, draws, *shape)`` (10 x 100
        x the declared shape), constrained space.
    :raises ValueError: naming ``name`` when it is unknown or has no stored draws.
    """
    directory, entry = _entry(name)
    if not entry["has_reference"]:
        raise ValueError(f"posterior {name!r}: the bundle has no reference draws for it")
    arrays = _arrays(directory / f"{name}.npz")
    return {d["name"]: arrays[f"reference.{d['name']}"].astype(np.float64, copy=True)
            for d in entry["parameters"]}


def load_posteriordb_stan_code(name: str) -> str:
    """The Stan program of ``name``, when the bundle was built with its Stan sources.

    :raises ValueError: naming ``name`` when it is unknown.
    :raises FileNotFoundError: when the bundle holds no ``stan/<model>.stan``; the message
        gives the program's address in posteriordb.
    """
    directory, entry = _entry(name)
    path = directory / "stan" / f"{entry['model']}.stan"
    if not path.is_file():
        raise FileNotFoundError(f"posterior {name!r}: no Stan source in the bundle; see "
                                + POSTERIORDB_URL.format(model=entry["model"]))
    return path.read_text()


def parse_stan_index(column: str) -> tuple[str, tuple[int, ...]]:
    """Split a Stan draw name into the variable and its 0-based index.

    Stan names elements 1-based, indices separated by commas: ``"theta[2,1]"`` ->
    ``("theta", (1, 0))``; a scalar ``"sigma"`` -> ``("sigma", ())``.

    :raises ValueError: naming ``column`` when it is not of that form.
    """
    match = re.fullmatch(r"\s*(\w+)\s*(?:\[([\d,\s]+)\])?\s*", column)
    if match is None or (match[2] is not None and not all(
            i.strip().isdigit() and int(i) >= 1 for i in match[2].split(","))):
        raise ValueError(f"column: not a Stan draw name of the form name[i,j]: {column!r}")
    index = tuple(int(i) - 1 for i in match[2].split(",")) if match[2] else ()
    return match[1], index
