r"""Training an :class:`~pyro_dgm.models.rbm.RBM` by contrastive divergence.

The log-likelihood gradient of an energy model is a difference of two expectations,

.. math::

    \nabla_\theta \log p(v) = -\nabla_\theta F(v)
        + \mathbb E_{v' \sim p}\big[\nabla_\theta F(v')\big],

the second of which is intractable. Both methods replace the model expectation by
"negative" samples from a short block-Gibbs run and minimize the surrogate

.. math::

    \mathcal L = \tfrac1B \sum_{n} F(v_n) - \tfrac1M \sum_m F(\tilde v_m)
    \qquad (\tilde v \text{ held fixed}),

whose gradient is the estimate above with the sign flipped, so any ``torch.optim``
optimizer applies. The data term uses :math:`p(h \mid v)` exactly (through the softplus in
:math:`F`), not sampled hidden states.

- **CD-k** (Hinton 2002): the negative chains start at the minibatch and run ``k`` steps.
- **PCD-k** (Tieleman 2008, "stochastic maximum likelihood"): ``num_chains`` persistent
  chains carry over from one update to the next and run ``k`` steps per update.

Salakhutdinov & Murray (2008) show CD-1 trains RBMs with poor likelihood (their AIS
figures on MNIST with 500 hidden units: CD1 ≈ −125.5, CD3 ≈ −105.5, CD25 ≈ −86.3 nats);
larger ``k`` and PCD do better. ``benchmarks/rbm.py`` compares them by exact
log-likelihood on binarized 8×8 digits.

The trainer needs of the model only what :class:`RBMLike` lists (free energy, block Gibbs,
the input check and the parameters ``W``, ``b``, ``c``), so this module does not import
:mod:`pyro_dgm.models.rbm`; :meth:`RBM.fit <pyro_dgm.models.rbm.RBM.fit>` builds a
:class:`CDTrainer`.

Example::

    >>> trainer = CDTrainer(rbm, k=1, persistent=True, lr=0.05)
    >>> for batch in loader:
    ...     gap = trainer.train_step(batch)      # a detached tensor: F(data) - F(negatives)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from pyro_dgm._validation import check_int, check_positive

__all__ = ["CDTrainer", "RBMLike", "contrastive_divergence_loss"]

# With progress=None, a tqdm bar is shown for runs of at least this many updates.
_PROGRESS_MIN_STEPS = 5000


@runtime_checkable
class RBMLike(Protocol):
    """What contrastive divergence uses of a model (:class:`~pyro_dgm.models.rbm.RBM` has
    it): weights ``W`` and biases ``b``, ``c``, the free energy, block Gibbs steps and the
    check of visible data."""

    W: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor

    def free_energy(self, v: torch.Tensor) -> torch.Tensor: ...

    def gibbs(self, v: torch.Tensor, num_steps: int = 1, *,
              generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def check_visible(self, v, name: str = "v", *, binary: bool = True) -> torch.Tensor: ...


def contrastive_divergence_loss(rbm: RBMLike, data: torch.Tensor,
                                negatives: torch.Tensor) -> torch.Tensor:
    """Mean free energy of ``data`` minus that of the (detached) ``negatives``."""
    return rbm.free_energy(data).mean() - rbm.free_energy(negatives.detach()).mean()


class CDTrainer:
    """CD-k or persistent CD-k updates of an RBM with a torch optimizer.

    :param rbm: the :class:`~pyro_dgm.models.rbm.RBM` to train (in place).
    :param optimizer: any ``torch.optim`` optimizer over ``rbm.parameters()``; default SGD
        with ``lr``, ``momentum`` and L2 ``weight_decay`` on ``W`` only.
    :param k: Gibbs steps per update (``>= 1``).
    :param persistent: PCD (chains persist across updates) instead of CD.
    :param num_chains: PCD chains (default: the first minibatch's size); they start at
        random training rows.
    :param generator: random source for the Gibbs steps, shuffling and chain starts.

    ``history`` collects one dict per epoch of :meth:`fit`: ``epoch`` and
    ``free_energy_gap``, the mean surrogate loss (a training monitor, not a likelihood).
    """

    def __init__(self, rbm: RBMLike, optimizer: torch.optim.Optimizer | None = None, *,
                 k: int = 1, persistent: bool = False, num_chains: int | None = None,
                 lr: float = 0.05, momentum: float = 0.5, weight_decay: float = 0.0,
                 generator: torch.Generator | None = None):
        if not isinstance(rbm, RBMLike):
            raise ValueError(f"rbm must be an RBM, got {type(rbm).__name__}")
        self.rbm = rbm
        self.k = check_int("k", k, minimum=1)
        self.persistent = bool(persistent)
        self.num_chains = None if num_chains is None else check_int(
            "num_chains", num_chains, minimum=1)
        if optimizer is None:
            lr = check_positive("lr", lr)
            momentum = check_positive("momentum", momentum, strict=False)
            weight_decay = check_positive("weight_decay", weight_decay, strict=False)
            optimizer = torch.optim.SGD(
                [{"params": [rbm.W], "weight_decay": weight_decay},
                 {"params": [rbm.b, rbm.c], "weight_decay": 0.0}], lr=lr, momentum=momentum)
        self.optimizer = optimizer
        self.generator = generator
        self.chains: torch.Tensor | None = None
        self.history: list[dict] = []

    def _start_chains(self, rows: torch.Tensor, count: int) -> None:
        pick = torch.randint(rows.shape[0], (count,), generator=self.generator,
                             device=rows.device)
        self.chains = rows[pick].clone()

    def negatives(self, batch: torch.Tensor) -> torch.Tensor:
        """Negative samples for one update: ``k`` Gibbs steps from the batch (CD) or from
        the persistent chains, which are advanced (PCD)."""
        if not self.persistent:
            return self.rbm.gibbs(batch, self.k, generator=self.generator)[0]
        if self.chains is None:
            self._start_chains(batch, self.num_chains or batch.shape[0])
        self.chains = self.rbm.gibbs(self.chains, self.k, generator=self.generator)[0]
        return self.chains

    def _step(self, batch: torch.Tensor) -> torch.Tensor:
        negatives = self.negatives(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = contrastive_divergence_loss(self.rbm, batch, negatives)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def train_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One update from a ``(B, n_visible)`` binary minibatch (checked: one host sync);
        returns the detached surrogate loss (free-energy gap)."""
        batch = self.rbm.check_visible(batch, "batch")
        if batch.dim() != 2:
            raise ValueError(f"batch must be 2-dimensional (B, n_visible), got shape "
                             f"{tuple(batch.shape)}")
        return self._step(batch)

    def fit(self, data: torch.Tensor, *, epochs: int = 10, batch_size: int = 100,
            shuffle: bool = True, progress: bool | None = None, callback=None) -> list[dict]:
        """Run ``epochs`` passes over ``data`` (``(N, n_visible)``, binary, checked once) in
        minibatches of ``batch_size`` (the last one may be smaller).

        :param progress: show a tqdm bar over the updates; ``None``: only for runs of at
            least 5000 updates.
        :param callback: called as ``callback(epoch, trainer)`` after each epoch (e.g. to
            record an exact log-likelihood); a truthy return value stops training.
        :return: ``self.history``.
        """
        data = self.rbm.check_visible(data, "data")
        if data.dim() != 2 or data.shape[0] == 0:
            raise ValueError(f"data must be a non-empty (N, n_visible) matrix, got shape "
                             f"{tuple(data.shape)}")
        epochs = check_int("epochs", epochs, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        n = data.shape[0]
        batches = -(-n // batch_size)
        if self.persistent and self.chains is None:
            self._start_chains(data, self.num_chains or min(n, batch_size))
        show = progress if progress is not None else epochs * batches >= _PROGRESS_MIN_STEPS
        bar = tqdm(total=epochs * batches, disable=not show, desc="RBM " + (
            f"PCD-{self.k}" if self.persistent else f"CD-{self.k}"), leave=False)
        try:
            for epoch in range(len(self.history), len(self.history) + epochs):
                order = (torch.randperm(n, generator=self.generator, device=data.device)
                         if shuffle else torch.arange(n, device=data.device))
                total = data.new_zeros(())
                for start in range(0, n, batch_size):
                    total += self._step(data[order[start:start + batch_size]])
                    bar.update(1)
                gap = float(total) / batches  # one sync per epoch
                self.history.append({"epoch": epoch, "free_energy_gap": gap})
                bar.set_postfix(gap=f"{gap:.3f}")
                if callback is not None and callback(epoch, self):
                    break
        finally:
            bar.close()
        return self.history
