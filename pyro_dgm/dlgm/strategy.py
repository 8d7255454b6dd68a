r"""How the training loop spreads over processes: one small object.

:func:`~pyro_dgm.dlgm.train` asks its :class:`Strategy` five things, and nothing else
differs between a single process and data-parallel training:

- :meth:`~Strategy.start` — once, after the config is settled and before anything is built,
  with the requested device, the batch size (total over processes) and the number of
  training rows; returns the device to train on (e.g. ``cuda:<local rank>``);
- :meth:`~Strategy.index_batches` — each epoch's index tensors for
  ``loss_module(x, subsample=idx)``, from a ``torch.Generator`` seeded by ``(seed, epoch)``
  (the same on every process, so the processes agree on the permutation);
- :meth:`~Strategy.wrap` — the module each step calls (e.g. ``DistributedDataParallel``
  around ``objective(model, guide)``; guide parameters exist before it is called);
- :meth:`~Strategy.reduce` — the epoch's summed loss as logged (the mean over processes);
- :attr:`~Strategy.is_main` — only the main process writes metrics, plots and checkpoints
  and shows progress; :meth:`~Strategy.close` — once at the end, also after an error;
  :meth:`~Strategy.explain` may replace an error by a clearer one (a timed-out collective
  by one naming the stuck rank).

:class:`LocalStrategy` (the default) is one process: a permutation of the rows cut into
batches, the module as it is, the loss as it is. The data-parallel strategy is
:class:`pyro_dgm.distributed.DDPStrategy` (``pyro-dgm train --distributed``).

Example::

    >>> class Quiet(LocalStrategy):               # a worker that must not write files
    ...     is_main = False
    >>> result = train(TrainConfig(epochs=2), "runs/quiet", strategy=Quiet())
    >>> result.is_main, os.path.exists("runs/quiet")
    (False, False)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch

from pyro_dgm._validation import check_int

__all__ = ["LocalStrategy", "Strategy"]


class Strategy(ABC):
    """The part of the training loop that depends on the number of processes.

    Subclasses implement :meth:`index_batches`, :meth:`wrap` and :meth:`reduce`;
    :meth:`start` and :meth:`close` default to doing nothing, :attr:`is_main` to ``True``.
    """

    #: whether this process writes files and shows progress
    is_main: bool = True

    def start(self, *, device: str, batch_size: int, num_data: int) -> str:
        """Called once by the loop before model and data are built; returns the device.

        :param device: the config's device.
        :param batch_size: the config's batch size (the total over all processes).
        :param num_data: number of training rows.
        :raises ValueError: a setting this strategy cannot run.
        """
        return device

    @abstractmethod
    def index_batches(self, epoch: int, num_data: int,
                      generator: torch.Generator) -> Iterable[torch.Tensor]:
        """Index tensors of one epoch's steps for this process.

        :param epoch: 0-based epoch.
        :param num_data: number of training rows.
        :param generator: seeded by ``(seed, epoch)``, the same on every process.
        """

    @abstractmethod
    def wrap(self, loss_module: torch.nn.Module) -> torch.nn.Module:
        """The module each step calls as ``module(x, subsample=idx)``."""

    @abstractmethod
    def reduce(self, value: torch.Tensor) -> torch.Tensor:
        """An epoch's summed loss as it is logged (e.g. the mean over processes)."""

    def explain(self, error: Exception) -> Exception:
        """A clearer exception for ``error`` raised while training (default: ``error``).

        E.g. the data-parallel strategy names the stuck rank when a collective times out.
        """
        return error

    def close(self) -> None:
        """Called once when the loop ends, also after an error."""
        return None


class LocalStrategy(Strategy):
    """One process: a permutation of ``range(num_data)`` in batches of ``batch_size``.

    :param batch_size: indices per step; default: the config's, set by :meth:`start`.

    Example::

        >>> s = LocalStrategy(batch_size=4)
        >>> [len(b) for b in s.index_batches(0, 10, torch.Generator().manual_seed(0))]
        [4, 4, 2]
    """

    def __init__(self, batch_size: int | None = None):
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size,
                                                                    minimum=1)

    def start(self, *, device: str, batch_size: int, num_data: int) -> str:
        """Use the config's ``batch_size``; train on ``device``."""
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        return device

    def index_batches(self, epoch: int, num_data: int,
                      generator: torch.Generator) -> Iterable[torch.Tensor]:
        """A permutation drawn from ``generator`` cut into batches (the last may be short)."""
        if self.batch_size is None:
            raise ValueError("LocalStrategy has no batch size: give one or call start()")
        return torch.randperm(num_data, generator=generator).split(self.batch_size)

    def wrap(self, loss_module: torch.nn.Module) -> torch.nn.Module:
        """``loss_module`` itself."""
        return loss_module

    def reduce(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` itself."""
        return value
