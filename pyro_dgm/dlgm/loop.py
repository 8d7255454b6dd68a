r"""Training loop for :class:`~pyro_dgm.models.DLGM` with checkpoints and exact resume.

One epoch: the :class:`~pyro_dgm.dlgm.Strategy` hands out **index tensors** ``idx`` (by
default a random permutation cut into minibatches), and each step is

.. code-block:: python

    loss = step_module(x, subsample=idx)   # strategy.wrap(objective(model, guide))
    optimizer.zero_grad(); loss.backward(); optimizer.step()

where ``objective(model, guide)`` is the ``nn.Module`` whose forward is the objective's
``differentiable_loss`` (``Trace_ELBO``, :class:`~pyro_dgm.inference.IWAE` or
:class:`~pyro_dgm.inference.PerturbativeELBO`), an unbiased estimate of the negative bound
of the whole training set (scale :math:`N/B`). The strategy (default
:class:`~pyro_dgm.dlgm.LocalStrategy`, one process; data-parallel:
:class:`pyro_dgm.distributed.DDPStrategy`) decides the batches, the wrapper, how the logged
loss is reduced and which process writes files.

Every epoch writes ``metrics.csv``/``metrics.json`` (train loss and test ELBO in nats per
image, seconds) and a checkpoint (:mod:`~pyro_dgm.dlgm.checkpoint`) holding model, guide,
optimizer, the random states and the epoch; ``loss.png`` every :data:`PLOT_EVERY` epochs
and at the end. ``train(config, out, resume=True)`` reloads the newest checkpoint (through
:func:`~pyro_dgm.dlgm.resume_point`) and continues exactly: the per-epoch data order and
dynamic binarization come from generators seeded by ``(seed, epoch)``, and the sampling
state from the restored RNGs, so 4 epochs equal 2 epochs plus a resume for 2.
``config.epochs`` is the total number of epochs.

A run owns its directory (:mod:`~pyro_dgm.dlgm.rundir`): a fresh run refuses a directory
holding another run's checkpoints unless ``overwrite=True``, and ``config.json`` and every
checkpoint carry the run's id and config hash. A loss that is not finite stops the run with
``ValueError: loss is not finite at epoch E step S: lower the learning rate``.

Example::

    >>> cfg = TrainConfig(latent_dims=[10], objective="iwae", k=5, epochs=20)
    >>> result = train(cfg, "runs/iwae5")
    >>> result.history[-1]["test_elbo"]
    >>> result = train(TrainConfig(epochs=40), "runs/iwae5", resume=True)   # 20 more
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyro
import torch

from pyro_dgm.dlgm.checkpoint import (
    capture_rng_state,
    restore_rng_state,
    resume_point,
    save_checkpoint,
)
from pyro_dgm.dlgm.config import TrainConfig, check_device, load_data
from pyro_dgm.dlgm.guides import build, build_objective
from pyro_dgm.dlgm.rundir import check_run_dir, clear_run_dir, new_identity, write_run_file
from pyro_dgm.dlgm.strategy import LocalStrategy, Strategy
from pyro_dgm.inference import NonFiniteLossError, compile_loss
from pyro_dgm.models.dlgm import DLGM

__all__ = ["PLOT_EVERY", "TrainResult", "train"]

#: ``loss.png`` is redrawn every this many epochs and after the last one
PLOT_EVERY = 10


@dataclass
class TrainResult:
    """What :func:`train` returns.

    :param model: the trained model; ``guide`` the trained recognition model.
    :param history: one dict per epoch (``epoch``, ``train_loss``, ``test_elbo``,
        ``seconds``), resumed epochs included.
    :param out: the run directory (``None``: nothing was written).
    :param is_main: whether this process is the main one (the one that wrote the files;
        always ``True`` in a single process).
    :param compile_seconds: with ``compile=True``, the seconds spent tracing (and
        compiling) the step, kept apart from the epochs' ``seconds``.
    """

    model: DLGM
    guide: torch.nn.Module
    history: list[dict]
    out: Path | None
    is_main: bool = True
    #: seconds spent tracing the compiled step (``None``: not compiled)
    compile_seconds: float | None = None


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


def _resolve(config: TrainConfig, out: Path | None, resume: bool | dict,
             overwrite: bool) -> tuple[TrainConfig, dict | None]:
    """The run's config and the checkpoint state to continue from (``None``: fresh)."""
    if isinstance(resume, dict):  # already read by resume_point
        config, state = config.validate(), resume
    elif not resume:
        config, state = config.validate(), None
        if out is not None:
            check_run_dir(out, overwrite=overwrite)  # read-only; cleared by the main process
    else:
        if out is None:
            raise ValueError("resume needs the run directory")
        stored, state = resume_point(out, map_location="cpu")
        stored.epochs = config.epochs
        config = stored.validate()
    if state is not None and overwrite:
        raise ValueError("overwrite: a resumed run continues its directory; overwrite is "
                         "for a fresh run only")
    check_device("device", config.device)
    return config, state


def _diverged(epoch: int, step: int, lr: float) -> ValueError:
    return ValueError(f"loss is not finite at epoch {epoch + 1} step {step + 1}: lower the "
                      f"learning rate (lr={lr:g})")


def _blew_up(error: ValueError, params: list, stepped: bool) -> bool:
    """Whether ``error`` comes from parameters that optimization drove out of range."""
    if not all(bool(torch.isfinite(p).all()) for p in params):
        return True
    # a distribution argument out of its support (e.g. a scale that underflowed to 0)
    return stepped and str(error).startswith("Expected parameter")


def _check_finite(losses: list, epoch: int, lr: float) -> None:
    """Raise the divergence message naming the first step whose loss is not finite."""
    if losses:
        bad = torch.isfinite(torch.stack(losses)).logical_not().nonzero()
        if len(bad):
            raise _diverged(epoch, int(bad[0]), lr)


def _step(step_module, optimizer, x, idx, params, epoch: int, step: int,
          lr: float) -> torch.Tensor:
    """One optimizer step; a non-finite loss or parameters raise the project's message."""
    with warnings.catch_warnings():  # Pyro's "Encountered NaN": the check below says it
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        try:
            loss = step_module(x, subsample=idx)
        except NonFiniteLossError:  # the project's objectives say so themselves
            raise _diverged(epoch, step, lr) from None
        except ValueError as e:  # Pyro's validation of a distribution built from NaN
            if _blew_up(e, params, stepped=epoch > 0 or step > 0):
                raise _diverged(epoch, step, lr) from None
            raise
        optimizer.zero_grad()
        loss.backward()
    optimizer.step()  # after the (collective) backward: every process gets here
    return loss.detach()  # checked once per epoch (no host sync per step)


def train(config: TrainConfig, out: str | os.PathLike | None = None, *,
          resume: bool | dict = False, progress: bool = True,
          strategy: Strategy | None = None, overwrite: bool = False,
          compile: bool = False) -> TrainResult:
    """Train (or continue training) a DLGM; see the module docstring.

    :param config: the run. With ``resume=True`` every field but ``epochs`` comes from the
        checkpoint.
    :param out: output directory (metrics, plot, checkpoints); ``None`` writes nothing.
    :param resume: ``True``: continue from the newest checkpoint in ``out``; or the state
        returned by :func:`~pyro_dgm.dlgm.resume_point`, with ``config`` the config returned
        with it (``epochs`` and ``device`` may be changed).
    :param progress: show a progress bar (main process only).
    :param strategy: how the loop spreads over processes (default:
        :class:`~pyro_dgm.dlgm.LocalStrategy`); closed when the loop ends.
    :param overwrite: a fresh run may replace another run in ``out`` (its checkpoints and
        run files are removed first); without it such a directory is an error.
    :param compile: run the objective through
        :func:`~pyro_dgm.inference.compile_loss` (one captured graph per batch shape; the
        same draws and gradients as without it, so the same metrics and an exact resume).
        Not part of the config: a run may be resumed with or without it.
    :raises ValueError: bad config or device, ``out`` holding another run, data the model
        cannot take, resume without checkpoint, a loss that is not finite.

    Example::

        >>> result = train(TrainConfig(epochs=2), "runs/vae", progress=False)
        >>> [h["epoch"] for h in result.history]
        [1, 2]
    """
    out = None if out is None else Path(out)
    strategy = LocalStrategy() if strategy is None else strategy
    try:
        config, state = _resolve(config, out, resume, overwrite)
        # the row count from a CPU load: nothing touches a GPU before the strategy has
        # chosen this process's device (e.g. "cuda" -> "cuda:<local rank>")
        num_data = len(load_data(replace(config, device="cpu"), 0, "train"))
        config.device = strategy.start(device=config.device, batch_size=config.batch_size,
                                       num_data=num_data)
        x0 = load_data(config, 0, "train")  # its own generators: no global random state
        with pyro.settings.context(module_local_params=True):
            return _loop(config, out, state, x0, strategy, progress, overwrite, compile)
    except Exception as error:
        better = strategy.explain(error)
        if better is error:
            raise
        raise better from error
    finally:
        strategy.close()


def _loop(config: TrainConfig, out: Path | None, state: dict | None, x0: torch.Tensor,
          strategy: Strategy, progress: bool, overwrite: bool, compile: bool) -> TrainResult:
    pyro.set_rng_seed(config.seed)
    x_test = load_data(config, None, "test")
    model, guide = build(config, x0)
    model.check_data(x0, "data")
    objective = compile_loss(build_objective(config)) if compile else build_objective(config)
    loss_module = objective(model, guide)
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=config.lr)
    history: list[dict] = []
    start = 0
    identity = new_identity(config)
    if state is not None:
        identity = dict(state.get("run") or identity)
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state.get("extra", {}).get("history", []))
        start = int(state["epoch"])
        restore_rng_state(state["rng"])
    step_module = strategy.wrap(loss_module)
    params = list(loss_module.parameters())
    num_data = len(x0)
    eval_loss = build_objective(TrainConfig(objective="elbo", k=1))
    main = strategy.is_main
    if out is not None and main:
        if state is None and overwrite:
            clear_run_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        write_run_file(out, config, identity)
    from tqdm.auto import tqdm

    bar = tqdm(range(start, config.epochs), disable=not (progress and main), desc="train",
               unit="epoch", initial=start, total=config.epochs)
    for epoch in bar:
        began = time.perf_counter()
        x = x0 if epoch == 0 or config.binarize == "fixed" or config.data != "digits" \
            else load_data(config, epoch, "train")
        g = torch.Generator().manual_seed(config.seed * 7919 + epoch)
        losses = []
        for step, idx in enumerate(strategy.index_batches(epoch, num_data, g)):
            try:
                losses.append(_step(step_module, optimizer, x, idx.to(x.device), params,
                                    epoch, step, config.lr))
            except ValueError:  # caused by an earlier non-finite loss: name that step
                _check_finite(losses, epoch, config.lr)
                raise
        count = len(losses)
        _check_finite(losses, epoch, config.lr)  # one host sync per epoch
        total = strategy.reduce(torch.stack(losses).sum() if losses else x.new_zeros(()))
        with torch.no_grad():
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Encountered NaN",
                                            category=UserWarning)
                    test_elbo = -eval_loss.differentiable_loss(model, guide, x_test) \
                        / len(x_test)
            except ValueError as e:
                if _blew_up(e, params, stepped=True):
                    raise _diverged(epoch, max(count - 1, 0), config.lr) from None
                raise
        row = {"epoch": epoch + 1, "train_loss": float(total) / max(count, 1) / num_data,
               "test_elbo": float(test_elbo), "seconds": time.perf_counter() - began}
        if not math.isfinite(row["train_loss"]):
            raise _diverged(epoch, max(count - 1, 0), config.lr)
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.2f}", test_elbo=f"{row['test_elbo']:.2f}")
        if out is not None and main:
            _write_metrics(out, history)
            if (epoch + 1) % PLOT_EVERY == 0 or epoch + 1 == config.epochs:
                _plot_loss(out, history)
            save_checkpoint(out, {
                "epoch": epoch + 1, "config": asdict(config),
                "model": model.state_dict(), "guide": guide.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": capture_rng_state(),
                "run": identity, "extra": {"history": history}})
    bar.close()
    return TrainResult(model, guide, history, out, is_main=main,
                       compile_seconds=objective.compile_seconds if compile else None)
