r"""Atomic, ``weights_only``-loadable training checkpoints with every random state.

A checkpoint is one ``torch.save`` file ``checkpoint-<epoch>.pt`` holding a plain dict:
``epoch``, ``config`` (JSON-like), ``model``/``guide``/``optimizer`` state dicts, the random
states of torch (CPU and CUDA), numpy, Python's ``random`` (Pyro's RNG state is exactly
these three) and free-form ``extra`` (metrics so far). Everything is stored as tensors,
numbers, strings, lists and dicts, so ``torch.load(path, weights_only=True)`` reads it
without unpickling arbitrary objects.

Writes are atomic: the file is written to ``.checkpoint-<epoch>.pt.tmp``, flushed, fsynced
and renamed over the final name (``os.replace``), so a crash mid-write never leaves a
half-written checkpoint under a checkpoint name. The last ``keep`` checkpoints are kept
(default two), so if the newest is damaged after the fact (truncated copy, bad disk) the
previous one is still there; :func:`load_checkpoint` then raises a ``ValueError`` naming
the damaged file and the intact one to continue from (``checkpoint=`` / ``--checkpoint``),
and deletes nothing. A file that parses but does not load (a CUDA checkpoint on a CPU-only
machine, another torch version) is reported as such. Only checkpoints of the run that
``config.json`` names are used (:mod:`~pyro_dgm.dlgm.rundir`).

**Resume is resolved here, once**: :func:`resume_point` reads the newest checkpoint of a run
and returns its stored :class:`~pyro_dgm.dlgm.TrainConfig` and state; the command line and
:func:`~pyro_dgm.dlgm.train` both go through it. :func:`load_trained` rebuilds the trained
model and guide from the same point (for evaluation).

Example::

    >>> save_checkpoint(out, {"epoch": 3, "model": model.state_dict(), ...})
    >>> state = load_checkpoint(out)          # newest one; ValueError if damaged/missing
    >>> restore_rng_state(state["rng"])
    >>> config, state = resume_point(out)     # the stored config, validated, and the state
    >>> model, guide, config, state = load_trained(out)
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_dgm.dlgm.config import TrainConfig, load_data
from pyro_dgm.dlgm.guides import build
from pyro_dgm.dlgm.rundir import (
    RunDirectoryError,
    check_belongs,
    checkpoint_paths,
    read_run_file,
)
from pyro_dgm.models.dlgm import DLGM

__all__ = ["capture_rng_state", "checkpoint_paths", "load_checkpoint", "load_trained",
           "restore_rng_state", "resume_point", "save_checkpoint"]

def capture_rng_state() -> dict:
    """torch, CUDA, numpy and Python random states as ``weights_only``-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike, state: dict, *, keep: int = 2) -> Path:
    """Write ``state`` (must hold an int ``"epoch"``) atomically; keep the newest ``keep``."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{int(state['epoch']):05d}.pt"
    tmp = directory / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in checkpoint_paths(directory)[:-keep]:
        old.unlink()
    return path


def _readable(path: Path) -> str | None:
    """Why ``path`` cannot be parsed as a ``torch.save`` file (``None``: it can)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if size == 0:
        return "is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        return f"is truncated or corrupted (not a complete torch.save archive, {size} bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        return f"is truncated or corrupted ({type(e).__name__}: {e})"
    return None if bad is None else f"is truncated or corrupted (bad member {bad})"


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160]}" if lines else type(error).__name__


def _damaged(path: Path, why: str, older: list[Path]) -> RunDirectoryError:
    intact = next((p for p in reversed(older) if _readable(p) is None), None)
    if intact is None:
        tail = "; no earlier intact checkpoint is left in the directory"
    else:
        tail = (f"; the previous checkpoint {intact.name} is intact: continue from it with "
                f"`pyro-dgm train --resume {path.parent} --checkpoint {intact.name}` (or "
                f"`pyro-dgm evaluate {path.parent} --checkpoint {intact.name}`); nothing was "
                "deleted")
    return RunDirectoryError(f"checkpoint {str(path)!r} {why}{tail}")


def load_checkpoint(directory: str | os.PathLike,
                    map_location: str | torch.device | None = None, *,
                    checkpoint: str | None = None) -> dict:
    """Load the newest checkpoint of ``directory`` (or ``checkpoint``), ``weights_only``.

    Only checkpoints of the run ``config.json`` names are used (see
    :mod:`~pyro_dgm.dlgm.rundir`); a newest checkpoint of another run is skipped.

    :param checkpoint: a file name in ``directory`` (e.g. ``"checkpoint-00003.pt"``) to load
        instead of the newest.
    :raises RunDirectoryError: (a ``ValueError``) no such directory or checkpoint; a
        checkpoint that cannot be parsed (the message names the newest intact earlier one;
        nothing is deleted); a checkpoint that parses but does not load (device, dtype,
        version: said as such); one that belongs to another run.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RunDirectoryError(f"{str(directory)!r} is not a directory")
    paths = checkpoint_paths(directory)
    if checkpoint is not None:
        chosen = [p for p in paths if p.name == Path(checkpoint).name]
        if not chosen:
            names = ", ".join(p.name for p in paths) or "none"
            raise RunDirectoryError(f"no checkpoint {checkpoint!r} in {str(directory)!r} "
                                    f"(there: {names})")
        paths = paths[:paths.index(chosen[0]) + 1]
    if not paths:
        raise RunDirectoryError(f"no checkpoint (checkpoint-*.pt) in {str(directory)!r}")
    run_id = (read_run_file(directory) or {}).get("run_id")
    for i in range(len(paths) - 1, -1, -1):
        path = paths[i]
        why = _readable(path)
        if why is not None:
            raise _damaged(path, why, paths[:i])
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - the file parses: device, dtype, version
            why = _readable(path)
            if why is not None:  # changed under us
                raise _damaged(path, why, paths[:i]) from None
            hint = (": it holds CUDA tensors; load it with --device cpu (map_location='cpu')"
                    if "CUDA" in str(e) else "")
            raise RunDirectoryError(
                f"checkpoint {str(path)!r} is intact but could not be loaded with "
                f"map_location={map_location!r} ({_reason(e)}){hint}") from None
        required = ("epoch", "config", "model", "guide", "optimizer", "rng")
        if not isinstance(state, dict) or any(k not in state for k in required):
            raise RunDirectoryError(f"checkpoint {str(path)!r} is not a pyro-dgm training "
                                    f"checkpoint (needs keys {', '.join(required)})")
        mine = (state.get("run") or {}).get("run_id")
        if run_id and mine and mine != run_id and checkpoint is None and i > 0:
            continue  # another run's leftover: only this run's checkpoints are used
        check_belongs(directory, path, state)
        state["path"] = str(path)
        return state
    raise AssertionError("unreachable")  # pragma: no cover


def resume_point(directory: str | os.PathLike,
                 map_location: str | torch.device | None = None, *,
                 checkpoint: str | None = None) -> tuple[TrainConfig, dict]:
    """The stored config and the state of the newest checkpoint of ``directory``.

    The one place a run is read back for resuming: the caller may change ``epochs`` (the
    total) and ``device`` of the returned config and hand both to
    :func:`~pyro_dgm.dlgm.train` (``train(config, out, resume=state)``).

    :param map_location: where to load the tensors (``"cpu"`` for resuming: the random
        states must be CPU tensors).
    :param checkpoint: continue from this checkpoint file of ``directory`` instead of the
        newest (e.g. the intact one an error message names).
    :raises ValueError: as :func:`load_checkpoint`, or a stored config that is not valid.

    Example::

        >>> config, state = resume_point("runs/iwae5", map_location="cpu")
        >>> config.epochs = 80
        >>> result = train(config, "runs/iwae5", resume=state)
    """
    state = load_checkpoint(directory, map_location=map_location, checkpoint=checkpoint)
    return TrainConfig.from_dict(state["config"]), state


def load_trained(directory: str | os.PathLike, map_location: str | torch.device | None = None,
                 *, checkpoint: str | None = None
                 ) -> tuple[DLGM, torch.nn.Module, TrainConfig, dict]:
    """``(model, guide, config, state)`` from the newest checkpoint of ``directory``.

    :param map_location: device to rebuild the model on (default: the stored one).
    :param checkpoint: a checkpoint file of ``directory`` to use instead of the newest.

    Example::

        >>> model, guide, config, state = load_trained("runs/iwae5")
    """
    config, state = resume_point(directory, map_location=map_location,
                                 checkpoint=checkpoint)
    if map_location is not None:
        config.device = str(map_location)
    x = load_data(config, 0, "train")
    with pyro.settings.context(module_local_params=True):
        model, guide = build(config, x)
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    return model, guide, config, state
