r"""Training loop for :class:`~pyro_dgm.models.DLGM` with checkpoints and exact resume.

One epoch: the data loader hands out **index tensors** ``idx`` (a random permutation cut
into minibatches), and each step is

.. code-block:: python

    loss = loss_module(x, subsample=idx)        # objective(model, guide): an ELBOModule
    optimizer.zero_grad(); loss.backward(); optimizer.step()

where ``loss_module = objective(model, guide)`` is the ``nn.Module`` whose forward is the
objective's ``differentiable_loss`` (``Trace_ELBO``, :class:`~pyro_dgm.inference.IWAE` or
:class:`~pyro_dgm.inference.PerturbativeELBO`), an unbiased estimate of the negative bound
of the whole training set (scale :math:`N/B`).

**Hooks for distributed training** (:func:`train` keyword arguments):

- ``index_batches(epoch, num_data, generator) -> iterable of LongTensor``: replaces the
  default loader (e.g. a ``DistributedSampler``-style shard of the permutation per rank).
  ``generator`` is a ``torch.Generator`` seeded by ``(seed, epoch)``, the same on every
  process.
- ``wrap_loss(loss_module) -> nn.Module``: e.g. ``DistributedDataParallel``; the returned
  module is called as above. Guide parameters are created before it is called.
- ``is_main_process``: only the main process writes metrics, plots and checkpoints and
  shows progress.

Every epoch writes ``metrics.csv``/``metrics.json`` (train loss and test ELBO in nats per
image, seconds) and a checkpoint (:mod:`~pyro_dgm.training.checkpoint`)
holding model, guide, optimizer, the random states and the epoch; ``loss.png`` every
:data:`PLOT_EVERY` epochs and at the end. ``train(config, out,
resume=True)`` reloads the newest checkpoint and continues exactly: the per-epoch data
order and dynamic binarization come from generators seeded by ``(seed, epoch)``, and the
sampling state from the restored RNGs, so 4 epochs equal 2 epochs plus a resume for 2.
``config.epochs`` is the total number of epochs.

Example::

    >>> cfg = TrainConfig(latent_dims=[10], objective="iwae", k=5, epochs=20)
    >>> result = train(cfg, "runs/iwae5")
    >>> result.history[-1]["test_elbo"]
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pyro
import torch

from pyro_dgm._validation import check_choice, check_int, check_positive
from pyro_dgm.models.dlgm import DLGM, GUIDES, make_guide
from pyro_dgm.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

__all__ = ["TrainConfig", "TrainResult", "build", "build_objective", "default_index_batches",
           "load_data", "load_trained", "train"]

OBJECTIVES = ("elbo", "iwae", "perturbative")
DATASETS = ("digits", "digits-continuous")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_TEST_SEED = 20140101  # the one dynamic binarization of the test set
#: ``loss.png`` is redrawn every this many epochs and after the last one
PLOT_EVERY = 10


@dataclass
class TrainConfig:
    """Everything a run depends on (stored in every checkpoint as a dict)."""

    latent_dims: list[int] = field(default_factory=lambda: [10])
    hidden_dims: list[int] = field(default_factory=lambda: [100, 100])
    likelihood: str = "bernoulli"
    objective: str = "elbo"
    k: int = 1
    estimator: str = "iwae"
    order: int = 3
    guide: str = "gaussian"
    num_flows: int = 4
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    data: str = "digits"
    binarize: str = "dynamic"
    max_rows: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    model: str = "dlgm"

    def validate(self) -> TrainConfig:
        """Check every field; raise ``ValueError`` naming the first bad one."""
        if self.model != "dlgm":
            raise ValueError(f"model must be 'dlgm', got {self.model!r}")
        if not self.latent_dims:
            raise ValueError("latent_dims must list at least one latent layer size")
        self.latent_dims = [check_int("latent_dims", d, minimum=1) for d in self.latent_dims]
        self.hidden_dims = [check_int("hidden_dims", h, minimum=1) for h in self.hidden_dims]
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("guide", self.guide, GUIDES)
        check_choice("data", self.data, DATASETS)
        check_choice("binarize", self.binarize, ("dynamic", "fixed"))
        check_choice("dtype", self.dtype, _DTYPES)
        check_choice("likelihood", self.likelihood, ("bernoulli", "gaussian"))
        if self.data == "digits-continuous" and self.likelihood != "gaussian":
            raise ValueError("data 'digits-continuous' (standardized) needs likelihood "
                             "'gaussian'")
        check_int("k", self.k, minimum=1)
        check_int("epochs", self.epochs, minimum=0)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("num_flows", self.num_flows, minimum=1)
        check_positive("lr", self.lr)
        if self.max_rows is not None:
            check_int("max_rows", self.max_rows, minimum=1)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"config: unknown field(s) {sorted(unknown)}")
        return cls(**d).validate()


@dataclass
class TrainResult:
    model: DLGM
    guide: torch.nn.Module
    history: list[dict]
    out: Path | None


def load_data(config: TrainConfig, epoch: int | None = None, split: str = "train"):
    """The ``split`` data of ``epoch`` (dynamic binarization: fresh per epoch, fixed test)."""
    dtype, device = _DTYPES[config.dtype], torch.device(config.device)
    if config.data == "digits-continuous":
        from pyro_dgm.data.digits_standardized import load_digits_standardized

        return load_digits_standardized(split=split, max_rows=config.max_rows if split ==
                                        "train" else None, dtype=dtype, device=device)
    from pyro_dgm.data import load_digits

    rows = config.max_rows if split == "train" else None
    if config.binarize == "fixed":
        return load_digits(binarize="fixed", split=split, max_rows=rows, dtype=dtype,
                           device=device)
    probs = load_digits(binarize=None, split=split, max_rows=rows, dtype=dtype, device=device)
    seed = _TEST_SEED if split == "test" else config.seed * 100003 + (epoch or 0)
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.bernoulli(probs, generator=g)


def build_objective(config: TrainConfig):
    """The ``pyro.infer.ELBO`` the config names (``k`` particles, vectorized)."""
    if config.objective == "elbo":
        return pyro.infer.Trace_ELBO(num_particles=config.k, vectorize_particles=True,
                                     max_plate_nesting=1)
    if config.objective == "iwae":
        from pyro_dgm.inference import IWAE

        return IWAE(num_particles=config.k, estimator=config.estimator, max_plate_nesting=1)
    from pyro_dgm.inference import PerturbativeELBO

    return PerturbativeELBO(order=config.order, num_particles=config.k, max_plate_nesting=1)


def build(config: TrainConfig, x_example: torch.Tensor):
    """Model and guide of ``config`` on the data's device/dtype, all parameters created."""
    model = DLGM(x_example.shape[-1], config.latent_dims, config.hidden_dims,
                 likelihood=config.likelihood).to(x_example)
    guide = make_guide(model, config.guide, num_flows=config.num_flows).to(x_example)
    with torch.no_grad(), pyro.poutine.block():  # lazy guides create their parameters
        guide(x_example, subsample=torch.arange(min(2, len(x_example)),
                                                device=x_example.device))
    return model, guide


def default_index_batches(batch_size: int) -> Callable:
    """Loader hook: a permutation of ``range(num_data)`` from ``generator`` in batches."""
    def batches(epoch: int, num_data: int, generator: torch.Generator) -> Iterable:
        order = torch.randperm(num_data, generator=generator)
        return order.split(batch_size)
    return batches


def _write_metrics(out: Path, history: list[dict]) -> None:
    (out / "metrics.json").write_text(json.dumps(history, indent=1))
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _plot_loss(out: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss (−bound)")
    ax.plot(epochs, [-h["test_elbo"] for h in history], label="test −ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)


def load_trained(directory, map_location=None):
    """``(model, guide, config, state)`` from the newest checkpoint of ``directory``."""
    state = load_checkpoint(directory, map_location=map_location)
    config = TrainConfig.from_dict(state["config"])
    if map_location is not None:
        config.device = str(map_location)
    x = load_data(config, 0, "train")
    with pyro.settings.context(module_local_params=True):
        model, guide = build(config, x)
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    return model, guide, config, state


def train(config: TrainConfig, out=None, *, resume: bool = False,
          index_batches: Callable | None = None, wrap_loss: Callable | None = None,
          is_main_process: bool = True, progress: bool = True) -> TrainResult:
    """Train (or, with ``resume=True``, continue training) a DLGM; see the module docstring.

    :param config: the run; on resume, every field but ``epochs`` comes from the checkpoint.
    :param out: output directory (metrics, plot, checkpoints); ``None`` writes nothing.
    :raises ValueError: bad config, data the model cannot take, resume without checkpoint.
    """
    out = None if out is None else Path(out)
    state = None
    if resume:
        if out is None:
            raise ValueError("resume needs the run directory")
        state = load_checkpoint(out, map_location=config.device)
        epochs = config.epochs
        config = TrainConfig.from_dict(state["config"])
        config.epochs = epochs
    config.validate()
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(config.seed)
        x0 = load_data(config, 0, "train")
        x_test = load_data(config, None, "test")
        model, guide = build(config, x0)
        model.check_data(x0, "data")
        objective = build_objective(config)
        loss_module = objective(model, guide)
        optimizer = torch.optim.Adam(loss_module.parameters(), lr=config.lr)
        history: list[dict] = []
        start = 0
        if state is not None:
            model.load_state_dict(state["model"])
            guide.load_state_dict(state["guide"])
            optimizer.load_state_dict(state["optimizer"])
            history = list(state.get("extra", {}).get("history", []))
            start = int(state["epoch"])
            restore_rng_state(state["rng"])
        step_module = wrap_loss(loss_module) if wrap_loss is not None else loss_module
        batches_of = index_batches or default_index_batches(config.batch_size)
        num_data = len(x0)
        eval_loss = build_objective(TrainConfig(objective="elbo", k=1))
        if out is not None and is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(asdict(config), indent=1))
        from tqdm.auto import tqdm

        bar = tqdm(range(start, config.epochs), disable=not (progress and is_main_process),
                   desc="train", unit="epoch", initial=start, total=config.epochs)
        for epoch in bar:
            began = time.perf_counter()
            x = x0 if epoch == 0 or config.binarize == "fixed" or config.data != "digits" \
                else load_data(config, epoch, "train")
            g = torch.Generator().manual_seed(config.seed * 7919 + epoch)
            total, count = torch.zeros((), dtype=x.dtype, device=x.device), 0
            for idx in batches_of(epoch, num_data, g):
                idx = idx.to(x.device)
                loss = step_module(x, subsample=idx)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total = total + loss.detach()
                count += 1
            if wrap_loss is not None:  # distributed: log the mean of the shards' losses
                from pyro_dgm.distributed import reduce_mean

                total = reduce_mean(total)
            with torch.no_grad():
                test_elbo = -eval_loss.differentiable_loss(model, guide, x_test) / len(x_test)
            row = {"epoch": epoch + 1, "train_loss": float(total) / max(count, 1) / num_data,
                   "test_elbo": float(test_elbo),
                   "seconds": time.perf_counter() - began}
            if not math.isfinite(row["train_loss"]):
                raise ValueError(f"training diverged at epoch {epoch + 1}: loss is "
                                 f"{row['train_loss']} (lower the learning rate)")
            history.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.2f}", test_elbo=f"{row['test_elbo']:.2f}")
            if out is not None and is_main_process:
                _write_metrics(out, history)
                if (epoch + 1) % PLOT_EVERY == 0 or epoch + 1 == config.epochs:
                    _plot_loss(out, history)
                save_checkpoint(out, {
                    "epoch": epoch + 1, "config": asdict(config),
                    "model": model.state_dict(), "guide": guide.state_dict(),
                    "optimizer": optimizer.state_dict(), "rng": capture_rng_state(),
                    "extra": {"history": history}})
        bar.close()
    return TrainResult(model, guide, history, out)
