"""``pyro-dgm evaluate DIR``: test log-likelihood, ELBO, active units, bits per layer,
per-image PSIS k-hat of the recognition model, samples and imputation of a ``pyro-dgm
train`` run (see :mod:`pyro_dgm.dlgm.evaluation`).

Example::

    pyro-dgm evaluate runs/iwae5                  # L_5000; writes evaluation.json and PNGs
    pyro-dgm evaluate runs/iwae5 --num-samples 500
    pyro-dgm evaluate runs/iwae5 --khat-samples 0  # skip the per-image k-hat

The parser is built from literals only; torch, Pyro and the application are imported only
when the command runs.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a trained DLGM run directory",
        description="Importance-sampled test log-likelihood (L_k), test ELBO, active units, "
        "bits per dimension per stochastic layer, the share of test images whose PSIS k-hat "
        "is >= 0.7 (the recognition model is not reliable there; histogram khat.png), a "
        "sample grid and missing-data imputation.")
    p.add_argument("directory", help="run directory written by pyro-dgm train")
    p.add_argument("--num-samples", type=int, default=5000, help="importance samples (5000)")
    p.add_argument("--chunk-size", type=int, default=250)
    p.add_argument("--khat-samples", type=int, default=1000,
                   help="guide draws per test image for its PSIS k-hat (1000; 0: skip)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default 1)")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="evaluate this checkpoint file of DIR instead of the newest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the arguments, evaluate, print the JSON result; returns the exit code."""
    for name, minimum in (("num_samples", 1), ("chunk_size", 1), ("seed", 0), ("threads", 1),
                          ("khat_samples", 0)):
        value = getattr(args, name)
        if value < minimum:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= {minimum}, got {value}")
    if 0 < args.khat_samples < 25:
        raise ValueError(f"--khat-samples: must be 0 (skip) or >= 25, got {args.khat_samples}")
    import torch

    from pyro_dgm.dlgm import evaluate_run
    from pyro_dgm.dlgm.config import check_device
    from pyro_dgm.dlgm.rundir import RunDirectoryError

    check_device("--device", args.device)
    torch.set_num_threads(args.threads)
    try:
        result = evaluate_run(args.directory, num_samples=args.num_samples,
                              chunk_size=args.chunk_size, device=args.device, seed=args.seed,
                              checkpoint=args.checkpoint, khat_samples=args.khat_samples)
    except RunDirectoryError as e:
        raise ValueError(f"directory: {e}") from None
    print(json.dumps(result, indent=1))
    return 0
