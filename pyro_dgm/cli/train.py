"""``pyro-dgm train``: train a deep latent Gaussian model on the 8×8 digits.

Example::

    pyro-dgm train --model dlgm --latent-dims 10 --objective iwae --k 5 --epochs 50 --out runs/iwae5
    pyro-dgm train --resume runs/iwae5 --epochs 80        # continue to 80 epochs in total
    pyro-dgm train --latent-dims 20 10 --guide iaf --objective elbo --out runs/iaf

Checkpoints, ``metrics.csv``/``metrics.json`` and ``loss.png`` are written into ``--out``
every epoch; see :mod:`pyro_dgm.dlgm`. ``--threads`` (default 1) sets torch's CPU
threads: these small networks run much faster single-threaded on a loaded machine.
``--out`` must not hold another run's checkpoints unless ``--overwrite``; ``--resume DIR
--checkpoint FILE`` continues from an earlier checkpoint than the newest. With
``--distributed``, ``--timeout`` (seconds) bounds how long a process waits for a stuck
one before it stops with a message naming it. ``--compile`` runs every step as one
captured graph (:func:`pyro_dgm.inference.compile_loss`): the same draws, gradients and
metrics, without Pyro's per-step Python; it is not stored in the config, so a run may be
resumed with or without it.

Bad input is one ``ValueError`` naming the option (``--seed: must be >= 0, got -1``),
raised before any directory is created.

The parser is built from plain data (:mod:`pyro_dgm.defaults`); torch, Pyro and the
application are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from pyro_dgm.defaults import (
    DISTRIBUTED_TIMEOUT,
    DLGM_BINARIZE,
    DLGM_DATASETS,
    DLGM_ESTIMATORS,
    DLGM_GUIDES,
    DLGM_LIKELIHOODS,
    DLGM_OBJECTIVES,
    DTYPE_NAMES,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a deep latent Gaussian model (VAE/IWAE) on the digits",
        description="Train a DLGM with ELBO, IWAE or perturbative objectives; write metrics, "
        "a loss curve and a checkpoint every epoch; --resume DIR continues a run exactly.")
    p.add_argument("--model", default="dlgm", choices=["dlgm"])
    p.add_argument("--latent-dims", type=int, nargs="+", default=None,
                   help="sizes of the stochastic layers, next to the data first (default 10)")
    p.add_argument("--hidden-dims", type=int, nargs="*", default=None,
                   help="hidden widths of every network (default 100 100)")
    p.add_argument("--objective", default=None, choices=DLGM_OBJECTIVES)
    p.add_argument("--k", type=int, default=None, help="particles per data point")
    p.add_argument("--estimator", default=None, choices=DLGM_ESTIMATORS,
                   help="IWAE gradient estimator (default iwae)")
    p.add_argument("--order", type=int, default=None, help="perturbative order (odd)")
    p.add_argument("--guide", default=None, choices=DLGM_GUIDES)
    p.add_argument("--num-flows", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="total number of epochs")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--data", default=None, choices=DLGM_DATASETS)
    p.add_argument("--likelihood", default=None, choices=DLGM_LIKELIHOODS)
    p.add_argument("--binarize", default=None, choices=DLGM_BINARIZE)
    p.add_argument("--max-rows", type=int, default=None, help="use the first N training rows")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default 1)")
    p.add_argument("--out", default=None, help="run directory (default: --resume DIR)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR from its newest checkpoint")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="with --resume: continue from this checkpoint file of DIR instead "
                   "of the newest (e.g. the intact one an error names)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace another run's checkpoints and run files in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="run each step as one captured graph (pyro_dgm.inference."
                        "compile_loss): same draws and metrics, less Python per step")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the processes started by `torchrun` "
                   "(gloo on CPU, NCCL on CUDA); --batch-size is the total over processes")
    p.add_argument("--timeout", type=float, default=DISTRIBUTED_TIMEOUT,
                   help="with --distributed: seconds a process waits for the others before "
                   "it stops and names the stuck rank (default %(default)g)")
    p.set_defaults(func=run)


_FIELDS = ("latent_dims", "hidden_dims", "objective", "k", "estimator", "order", "guide",
           "num_flows", "epochs", "batch_size", "lr", "data", "likelihood", "binarize",
           "max_rows", "dtype", "device", "seed")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_args(args: argparse.Namespace, given: dict) -> None:
    """Options, paths and the device, before anything is created (the config's numbers are
    checked by ``TrainConfig.validate``, named by their flag)."""
    from pyro_dgm.dlgm.config import check_device
    from pyro_dgm.dlgm.rundir import check_writable

    if args.threads < 1:
        raise ValueError(f"--threads: must be >= 1, got {args.threads}")
    if "seed" in given and given["seed"] < 0:
        raise ValueError(f"--seed: must be >= 0, got {given['seed']}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout: must be > 0 seconds, got {args.timeout}")
    if args.resume is not None:
        other = sorted(set(given) - {"epochs", "device"})
        if other:
            raise ValueError(f"--resume: continues a stored config; only --epochs/--device "
                             f"may be given, got {_flag(other[0])}")
        if args.out is not None and args.out != args.resume:
            raise ValueError("--out: must be the --resume directory (or left out)")
        if args.overwrite:
            raise ValueError("--overwrite: a resumed run continues its directory")
    else:
        if args.out is None:
            raise ValueError("--out: give the run directory")
        if args.checkpoint is not None:
            raise ValueError("--checkpoint: only with --resume DIR")
    check_device("--device", given.get("device"))
    try:
        check_writable(args.out if args.out is not None else args.resume)
    except ValueError as e:
        raise ValueError(f"{'--out' if args.out is not None else '--resume'}: {e}") from None


def _config(args: argparse.Namespace, given: dict):
    """The run's config, the directory and what to resume from (``False``: fresh)."""
    from pyro_dgm.dlgm import TrainConfig, resume_point
    from pyro_dgm.dlgm.rundir import check_run_dir

    if args.resume is not None:
        try:
            config, resume = resume_point(args.resume, map_location="cpu",
                                          checkpoint=args.checkpoint)
        except ValueError as e:
            raise ValueError(f"--resume: {e}") from None
        for name in ("epochs", "device"):
            if name in given:
                setattr(config, name, given[name])
        return config, args.resume, resume
    if given.get("data") == "digits-continuous" and "likelihood" not in given:
        given["likelihood"] = "gaussian"
    config = TrainConfig(**given).validate()  # errors name their flag (cli._name_the_flag)
    try:
        check_run_dir(args.out, overwrite=args.overwrite)
    except ValueError as e:
        raise ValueError(f"--out: {e}") from None
    return config, args.out, False


def run(args: argparse.Namespace) -> int:
    """Check the arguments, then train (see the module docstring); returns the exit code."""
    given = {f: getattr(args, f) for f in _FIELDS if getattr(args, f) is not None}
    _check_args(args, given)
    import torch

    from pyro_dgm.dlgm import train

    torch.set_num_threads(args.threads)
    config, out, resume = _config(args, given)
    if not args.distributed:
        result = train(config, out, resume=resume, progress=not args.no_progress,
                       overwrite=args.overwrite, compile=args.compile)
    else:
        from pyro_dgm.distributed import DDPStrategy, StuckRankError

        try:
            result = train(config, out, resume=resume, progress=not args.no_progress,
                           strategy=DDPStrategy(timeout=args.timeout),
                           overwrite=args.overwrite, compile=args.compile)
        except StuckRankError as e:  # not a usage error: exit status 1, one line
            print(f"pyro-dgm train: {e}", file=sys.stderr)
            return 1
    if result.history and result.is_main:
        last = result.history[-1]
        print(f"epoch {last['epoch']}: train loss {last['train_loss']:.3f}, "
              f"test ELBO {last['test_elbo']:.3f} nats/image; run in {result.out}",
              file=sys.stdout)
        if result.compile_seconds is not None:
            print(f"compiled step: {result.compile_seconds:.2f} s tracing (not in the "
                  "epochs' seconds)", file=sys.stdout)
    return 0
