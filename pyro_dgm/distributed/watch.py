r"""Name the stuck rank when a collective times out.

A process that freezes (a deadlock, a stopped debugger, a hung file system) does not die,
so the others wait in their next collective until the process group's timeout
(``pyro-dgm train --distributed --timeout``, default
:data:`pyro_dgm.defaults.DISTRIBUTED_TIMEOUT`). Gloo and NCCL then raise an error that
says *that* something timed out, not *who*. :class:`Heartbeat` records in the process
group's key-value store where each rank last was (epoch, step, wall time); when a
collective times out, :meth:`Heartbeat.explain` turns the backend's error into a
:class:`StuckRankError` naming the ranks that fell behind.

Example::

    >>> beat = Heartbeat(rank=0, world_size=2, timeout=60)
    >>> beat.beat(epoch=0, step=3)               # before each step
    >>> raise beat.explain(error)                # StuckRankError: ... rank 1 is stuck ...
"""

from __future__ import annotations

import time

import torch.distributed as dist

__all__ = ["Heartbeat", "StuckRankError", "is_timeout"]

_KEY = "pyro_dgm/heartbeat/{}"


class StuckRankError(RuntimeError):
    """Another process did not reach a collective within the timeout (it is named)."""


def is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is a collective or rendezvous that timed out."""
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("timed out", "timeout", "time out", "connection closed",
                                  "connection reset"))


def _store():
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # noqa: BLE001 - no group, or a torch without the helper
        return None


class Heartbeat:
    """Where each rank last was, kept in the process group's store.

    :param rank: this process's rank; ``world_size`` the number of processes.
    :param timeout: the process group's timeout in seconds (reported in the message).
    """

    def __init__(self, rank: int, world_size: int, timeout: float):
        self.rank, self.world_size, self.timeout = int(rank), int(world_size), float(timeout)
        self.position = (-1, -1)
        self.store = _store() if dist.is_available() and dist.is_initialized() else None

    def beat(self, epoch: int, step: int) -> None:
        """Record that this rank starts ``step`` of ``epoch`` (0-based) now."""
        self.position = (int(epoch), int(step))
        if self.store is not None:
            try:
                self.store.set(_KEY.format(self.rank), f"{epoch} {step} {time.time():.3f}")
            except Exception:  # noqa: BLE001 - never let bookkeeping stop training
                self.store = None

    def _others(self) -> dict[int, tuple[int, int, float] | None]:
        seen: dict[int, tuple[int, int, float] | None] = {}
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            seen[rank] = None
            if self.store is None:
                continue
            try:
                key = _KEY.format(rank)
                if self.store.check([key]):
                    e, s, t = self.store.get(key).decode().split()
                    seen[rank] = (int(e), int(s), float(t))
            except Exception:  # noqa: BLE001 - the store may be down with its host
                continue
        return seen

    def explain(self, error: BaseException) -> BaseException:
        """A :class:`StuckRankError` naming the stuck ranks if ``error`` is a timeout."""
        if not is_timeout(error):
            return error
        seen = self._others()
        mine = self.position

        def behind(entry):
            return entry is None or (entry[0], entry[1]) < mine

        stuck = [r for r, entry in seen.items() if behind(entry)]
        if not stuck:
            stuck = [r for r, entry in seen.items() if entry and (entry[0], entry[1]) == mine]
        stuck = stuck or sorted(seen)
        now = time.time()
        parts = []
        for rank in stuck:
            entry = seen.get(rank)
            where = ("no step started" if entry is None else
                     f"last started epoch {entry[0] + 1} step {entry[1] + 1}, "
                     f"{now - entry[2]:.1f} s ago")
            parts.append(f"rank {rank} ({where})")
        here = ("before the first step" if mine[0] < 0 else
                f"at epoch {mine[0] + 1} step {mine[1] + 1}")
        verb = "is" if len(stuck) == 1 else "are"
        return StuckRankError(
            f"rank {self.rank}: waited {self.timeout:g} s for the other processes {here}; "
            f"{', '.join(parts)} {verb} stuck (raise --timeout if it is only slow)")
