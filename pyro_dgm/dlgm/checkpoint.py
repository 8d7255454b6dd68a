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
the damaged file and the intact one to fall back on.

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
import re
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_dgm.dlgm.config import TrainConfig, load_data
from pyro_dgm.dlgm.guides import build
from pyro_dgm.models.dlgm import DLGM

__all__ = ["capture_rng_state", "checkpoint_paths", "load_checkpoint", "load_trained",
           "restore_rng_state", "resume_point", "save_checkpoint"]

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


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


def checkpoint_paths(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files of ``directory``, oldest epoch first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


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


def load_checkpoint(directory: str | os.PathLike,
                    map_location: str | torch.device | None = None) -> dict:
    """Load the newest checkpoint of ``directory`` with ``weights_only=True``.

    :raises ValueError: no such directory, no checkpoint in it, or a newest checkpoint that
        is truncated or corrupted (the message names the previous checkpoint, which is left
        untouched).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"resume: {str(directory)!r} is not a directory")
    paths = checkpoint_paths(directory)
    if not paths:
        raise ValueError(f"resume: no checkpoint (checkpoint-*.pt) in {str(directory)!r}")
    path = paths[-1]
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, unexpected types ...
        fallback = (f"; the previous checkpoint {paths[-2].name} is intact: delete "
                    f"{path.name} to resume from it") if len(paths) > 1 else ""
        raise ValueError(f"checkpoint {str(path)!r} is truncated or corrupted "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120]}){fallback}"
                         ) from None
    required = ("epoch", "config", "model", "guide", "optimizer", "rng")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise ValueError(f"checkpoint {str(path)!r} is not a pyro-dgm training checkpoint "
                         f"(needs keys {', '.join(required)})")
    state["path"] = str(path)
    return state


def resume_point(directory: str | os.PathLike,
                 map_location: str | torch.device | None = None) -> tuple[TrainConfig, dict]:
    """The stored config and the state of the newest checkpoint of ``directory``.

    The one place a run is read back for resuming: the caller may change ``epochs`` (the
    total) and ``device`` of the returned config and hand both to
    :func:`~pyro_dgm.dlgm.train` (``train(config, out, resume=state)``).

    :param map_location: where to load the tensors (``"cpu"`` for resuming: the random
        states must be CPU tensors).
    :raises ValueError: as :func:`load_checkpoint`, or a stored config that is not valid.

    Example::

        >>> config, state = resume_point("runs/iwae5", map_location="cpu")
        >>> config.epochs = 80
        >>> result = train(config, "runs/iwae5", resume=state)
    """
    state = load_checkpoint(directory, map_location=map_location)
    return TrainConfig.from_dict(state["config"]), state


def load_trained(directory: str | os.PathLike, map_location: str | torch.device | None = None
                 ) -> tuple[DLGM, torch.nn.Module, TrainConfig, dict]:
    """``(model, guide, config, state)`` from the newest checkpoint of ``directory``.

    :param map_location: device to rebuild the model on (default: the stored one).

    Example::

        >>> model, guide, config, state = load_trained("runs/iwae5")
    """
    config, state = resume_point(directory, map_location=map_location)
    if map_location is not None:
        config.device = str(map_location)
    x = load_data(config, 0, "train")
    with pyro.settings.context(module_local_params=True):
        model, guide = build(config, x)
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    return model, guide, config, state
