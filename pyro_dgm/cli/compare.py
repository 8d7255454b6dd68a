"""``pyro-dgm compare``: run several inference methods on one model and compare them.

Example::

    pyro-dgm compare --quick --out report            # Bayesian FA on wine, 4 methods
    pyro-dgm compare --model fa-synthetic --methods nuts,fullrank --out report2
    pyro-dgm compare --model my_model.py:model --data my_data.npz --quick   # your own model
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from pyro_dgm.defaults import COMPARE_METHODS, COMPARE_MODEL, COMPARE_REFERENCE, DTYPE_NAMES

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare MCMC and VI posteriors of a model",
        description="Run inference methods on a registered model or a Pyro model function "
        "of your own, export each posterior to ArviZ NetCDF and write a comparison report "
        "(CSV, Markdown, PNG).")
    p.add_argument("--model", default=COMPARE_MODEL,
                   help=f"registered model (default: {COMPARE_MODEL}), or PATH.py:FUNCTION: "
                   "a Pyro model function in a Python file")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="data of a PATH.py:FUNCTION model, passed as keyword arguments: "
                   ".npz (arrays by name), .json (an object of numbers/lists) or .csv (one "
                   "array per column, header = names); integer arrays stay integer")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated registered methods (default: "
                   f"{','.join(COMPARE_METHODS)}); a VI method with '+psis' appended "
                   "(e.g. meanfield+psis) is its draws resampled with PSIS weights")
    p.add_argument("--reference", default=None,
                   help="reference method (default: the model's own reference draws where "
                   f"it has them, else {COMPARE_REFERENCE} where it runs, else the first "
                   "MCMC method named)")
    p.add_argument("--out", default="pyro-dgm-report", help="output directory")
    p.add_argument("--quick", action="store_true", help="small run, about 20 s on 2 cores")
    p.add_argument("--num-samples", type=int, default=None, help="draws per chain")
    p.add_argument("--num-warmup", type=int, default=None, help="MCMC warm-up steps")
    p.add_argument("--num-chains", type=int, default=None, help="MCMC chains")
    p.add_argument("--num-steps", type=int, default=None, help="SVI steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float64", choices=DTYPE_NAMES)
    p.add_argument("--list", action="store_true", help="list models and methods, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch CPU threads (default: cores / MCMC chains, at least 1; "
                   "chain processes inherit it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is a non-empty directory that is not a "
                   "previous report")
    p.set_defaults(func=run)


def _list() -> int:
    from pyro_dgm.compare.registry import METHODS, MODELS

    width = max(map(len, MODELS.names() + METHODS.names()))
    print("models:")
    for name in MODELS.names():
        print(f"  {name:{width}s} {MODELS.get(name).description}")
    print("methods:")
    for name in METHODS.names():
        entry = METHODS.get(name)
        print(f"  {name:{width}s} [{entry.kind}] {entry.description}")
    return 0


def run(args: argparse.Namespace) -> int:
    from pyro_dgm._dtypes import to_dtype
    from pyro_dgm.compare.problems.user import model_entry
    from pyro_dgm.compare.runner import default_settings, markdown_table, run_comparison

    if args.list:
        return _list()
    model = model_entry(args.model, args.data)
    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not methods:
            raise ValueError("methods: give at least one method name")
    settings = default_settings(
        quick=args.quick, num_samples=args.num_samples, num_warmup=args.num_warmup,
        num_chains=args.num_chains, num_steps=args.num_steps, seed=args.seed,
        device=args.device, dtype=to_dtype(args.dtype), progress=not args.no_progress,
        threads=args.threads)
    with warnings.catch_warnings(), _interrupts_until_committed() as committed:
        warnings.simplefilter("ignore", FutureWarning)
        result = run_comparison(model, methods, reference=args.reference,
                                out=args.out, settings=settings, overwrite=args.overwrite,
                                log=lambda msg: print(msg, file=sys.stderr),
                                on_commit=committed.set)
        print(markdown_table(result.summary), end="")
        for name, why in result.failures.items():
            print(f"warning: method {name} failed and is not in the report: {why}",
                  file=sys.stderr)
        print(f"report written to {result.out / 'index.md'}")
    return 0


@contextlib.contextmanager
def _interrupts_until_committed() -> Iterator[threading.Event]:
    """Ctrl-C stops the run (exit 130, the previous report kept) until the report is in
    place; after that it is too late to stop anything, and the command finishes (exit 0)."""
    committed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield committed
        return

    def handler(signum, frame):
        if not committed.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield committed
    finally:
        signal.signal(signal.SIGINT, previous)
