r"""Run directories are owned by one run: its identity, the ownership check, ``--overwrite``.

A run directory written by :func:`~pyro_dgm.dlgm.train` records which run it belongs to:
``config.json`` holds the config's fields plus ``run_id`` (random, made when the run starts)
and ``config_hash`` (a hash of the config without ``epochs`` and ``device``, the two fields
a resume may change), and every checkpoint holds the same pair under ``"run"``. So

- a fresh run refuses a directory that already holds another run's checkpoints
  (:func:`check_run_dir`) unless ``overwrite=True``, which first removes the files a run
  writes (:data:`RUN_FILES`, checkpoints) and nothing else;
- resuming and evaluating use only checkpoints of the run ``config.json`` names, and a
  checkpoint whose config does not match ``config.json`` is an error
  (:func:`check_belongs`).

Directories written before run identities existed (no ``run_id`` anywhere) are accepted as
they are.

Example::

    >>> check_run_dir("runs/vae", overwrite=False)      # ValueError if another run is there
    >>> identity = new_identity(config)                 # {"run_id": ..., "config_hash": ...}
    >>> write_run_file("runs/vae", config, identity)    # config.json
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

__all__ = ["RUN_FILES", "RunDirectoryError", "check_belongs", "check_run_dir",
           "check_writable", "checkpoint_paths", "clear_run_dir", "config_hash",
           "new_identity", "read_run_file", "write_run_file"]

#: files a training run or its evaluation writes next to the checkpoints
RUN_FILES = ("config.json", "metrics.csv", "metrics.json", "loss.png", "evaluation.json",
             "samples.png", "imputation.png")
_MUTABLE = ("epochs", "device")  # what a resume may change
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


class RunDirectoryError(ValueError):
    """A run directory or checkpoint problem (the command line prefixes the argument)."""


def config_hash(config) -> str:
    """16 hex digits identifying ``config`` (a ``TrainConfig`` or its dict) without
    ``epochs`` and ``device``."""
    d = dict(config if isinstance(config, dict) else asdict(config))
    for key in _MUTABLE + ("run_id", "config_hash"):
        d.pop(key, None)
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_identity(config) -> dict:
    """A fresh ``{"run_id", "config_hash"}`` for a run of ``config``."""
    return {"run_id": uuid.uuid4().hex[:12], "config_hash": config_hash(config)}


def read_run_file(directory: str | os.PathLike) -> dict | None:
    """The parsed ``config.json`` of ``directory`` (``None``: absent or unreadable)."""
    path = Path(directory) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_run_file(directory: str | os.PathLike, config, identity: dict) -> None:
    """Write ``config.json``: the config's fields, ``run_id`` and ``config_hash``."""
    data = {**asdict(config), "run_id": identity["run_id"],
            "config_hash": identity["config_hash"]}
    path = Path(directory) / "config.json"
    tmp = path.with_name(".config.json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def check_writable(directory: str | os.PathLike) -> Path:
    """``directory`` can be created or written (nothing is created here).

    :raises RunDirectoryError: it is an existing file, or its nearest existing ancestor is a
        file or not writable.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{str(path)!r} is an existing file, not a directory")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RunDirectoryError(f"cannot create {str(path)!r}: {str(probe)!r} is a file")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"cannot write to {str(probe)!r}: permission denied")
    try:  # what access() cannot tell: read-only file systems, /proc, root's limits
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise RunDirectoryError(f"cannot write to {str(probe)!r}: "
                                f"{e.strerror or type(e).__name__}") from None
    return path


def checkpoint_paths(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files ``checkpoint-<epoch>.pt`` of ``directory``, oldest epoch first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def check_run_dir(directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """A fresh run may use ``directory``: writable, and holding no other run's checkpoints.

    :param overwrite: allow a directory with another run (:func:`clear_run_dir` clears it).
    :raises RunDirectoryError: see :func:`check_writable`, or checkpoints of another run
        without ``overwrite``.
    """
    path = check_writable(directory)
    found = checkpoint_paths(path)
    if found and not overwrite:
        run = read_run_file(path) or {}
        who = f"run {run['run_id']}" if run.get("run_id") else "another run"
        raise RunDirectoryError(
            f"{str(path)!r} holds the checkpoints of {who} (up to {found[-1].name}): "
            f"continue it with --resume {path}, or pass --overwrite (overwrite=True) to "
            "replace it")
    return path


def clear_run_dir(directory: str | os.PathLike) -> None:
    """Remove a previous run's checkpoints and :data:`RUN_FILES` (nothing else)."""
    path = Path(directory)
    if not path.is_dir():
        return
    for old in checkpoint_paths(path):
        old.unlink()
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    for tmp in path.glob(".checkpoint-*.pt.tmp"):
        tmp.unlink()


def check_belongs(directory: str | os.PathLike, checkpoint: Path, state: dict) -> None:
    """The checkpoint ``state`` belongs to the run ``config.json`` of ``directory`` names.

    :raises RunDirectoryError: another run id, or a config that differs from ``config.json``
        in more than ``epochs``/``device``.
    """
    run = read_run_file(directory)
    if run is None:
        return
    mine = state.get("run") or {}
    if run.get("run_id") and mine.get("run_id") and run["run_id"] != mine["run_id"]:
        raise RunDirectoryError(
            f"checkpoint {checkpoint.name} belongs to run {mine['run_id']}, but config.json "
            f"of {str(directory)!r} describes run {run['run_id']}: the directory mixes two "
            "runs")
    stored, described = config_hash(state["config"]), config_hash(run)
    if stored != described:
        diff = sorted(k for k in state["config"] if k not in _MUTABLE
                      and state["config"][k] != run.get(k))
        raise RunDirectoryError(
            f"checkpoint {checkpoint.name} does not match config.json of {str(directory)!r} "
            f"(differs in {', '.join(diff) or 'its fields'}): it was written by another run")
