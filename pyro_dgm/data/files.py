"""A model's data from a file: named numeric arrays from ``.npz``, ``.json`` or ``.csv``.

What ``pyro-dgm compare --model PATH.py:FUNCTION --data FILE`` reads; the arrays then become
the model's keyword arguments through :func:`pyro_dgm.data.arrays.to_tensors` (floats as
tensors of the run's dtype, integer arrays as ``torch.long``, integer scalars as ``int``).

- ``.npz`` (``numpy.savez``): one array per name, as stored (an ``int64`` array stays
  integer, a ``float64`` one real);
- ``.json``: one object whose values are numbers or (nested, rectangular) lists of numbers;
  a number or list written without a decimal point or exponent (``3``, ``[0, 2, 1]``) is
  integer, one with (``3.0``) is real, as JSON itself writes them;
- ``.csv``: one array per column, the header row names them; a column whose every value
  is an integer (``2``, ``-1``, not ``2.0`` or ``2.5``) is an integer array, a column of
  other numbers is real.

Anything else is a one-line :class:`ValueError` that starts with the file's path and names
the array or column at fault (a non-numeric column, a string in a JSON list, a ragged list).

Example::

    >>> arrays = load_arrays("tests/data/linreg.npz")
    >>> sorted(arrays), arrays["g"].dtype.kind
    (['G', 'g', 'x', 'y'], 'i')
"""

from __future__ import annotations

import csv
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["DATA_SUFFIXES", "load_arrays"]

#: file types :func:`load_arrays` reads
DATA_SUFFIXES = (".npz", ".json", ".csv")

_INTEGER = re.compile(r"^[+-]?\d+$")


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the named arrays in ``path`` (the format follows the suffix; see the module).

    :raises ValueError: starting with ``path``: no such file, an unknown suffix, a file that
        cannot be parsed, or (naming it) an array that is not numeric.
    :return: name -> numpy array of kind integer, real or boolean, in the file's order.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise ValueError(f"{path}: unreadable file type {path.suffix or '(no suffix)'!r}; "
                         f"use one of {', '.join(DATA_SUFFIXES)}")
    reader = {".npz": _read_npz, ".json": _read_json, ".csv": _read_csv}[suffix]
    try:
        arrays = reader(path)
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile, json.JSONDecodeError,
            csv.Error) as e:
        raise ValueError(f"{path}: cannot read it as {suffix} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not arrays:
        raise ValueError(f"{path}: holds no arrays")
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{path}: array {name!r} is not numeric (dtype {array.dtype})")
    return arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle
        raise zipfile.BadZipFile("not a zip archive as numpy.savez writes")
    out = {}
    with np.load(path, allow_pickle=False) as archive:
        for name in archive.files:
            try:
                out[name] = archive[name]
            except ValueError:  # object arrays need pickle, which is never allowed
                raise ValueError(f"{path}: array {name!r} is not numeric (dtype object)") \
                    from None
    return out


def _read_json(path: Path) -> dict[str, np.ndarray]:
    content = json.loads(path.read_text())
    if not isinstance(content, dict):
        raise ValueError(f"{path}: must hold one JSON object (name -> number or list), "
                         f"not a {type(content).__name__}")
    out = {}
    for name, value in content.items():
        try:
            array = np.asarray(value)
        except ValueError:  # ragged nested lists
            raise ValueError(f"{path}: array {name!r} is not a rectangular list of numbers") \
                from None
        out[name] = array
    return out


def _column(path: Path, name: str, cells: list[str]) -> np.ndarray:
    cells = [c.strip() for c in cells]
    if all(_INTEGER.match(c) for c in cells):
        return np.array([int(c) for c in cells], dtype=np.int64)
    try:
        return np.array([float(c) for c in cells], dtype=np.float64)
    except ValueError:
        bad = next(c for c in cells if not _is_float(c))
        raise ValueError(f"{path}: column {name!r} is not numeric (value {bad!r})") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise ValueError(f"{path}: empty (a header row naming the columns is needed)")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if len(set(header)) != len(header) or not all(header):
        raise ValueError(f"{path}: the header must name every column once, got {header}")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} values for "
                             f"{len(header)} columns")
    if not body:
        raise ValueError(f"{path}: no rows below the header")
    return {name: _column(path, name, [row[j] for row in body])
            for j, name in enumerate(header)}
