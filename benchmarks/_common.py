"""Shared plumbing for the benchmarks: machine description, timing, one-JSON output.

Every benchmark prints exactly one JSON object::

    {"benchmark": "...", "machine": {...}, "settings": {...},
     "results": {raw figures}, "ratios": {"name_vs_other": ours / theirs}}

and has a ``--quick`` mode that finishes in under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

__all__ = ["emit", "machine_info", "parser", "sync", "time_per_call"]


def machine_info(device: str = "cpu") -> dict:
    """What the figures were measured on."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:
        import pyro

        info["pyro"] = pyro.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    return p


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work (timing only; never inside a measured hot loop)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_per_call(fn: Callable[[], object], *, repeat: int, warmup: int = 3,
                  device: str = "cpu", rounds: int = 3) -> float:
    """Median over ``rounds`` of the mean wall time (seconds) of ``repeat`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        sync(device)
        means.append((time.perf_counter() - start) / repeat)
    return statistics.median(means)


def emit(benchmark: str, results: dict, ratios: dict, *, settings: dict | None = None,
         device: str = "cpu", out: str | None = None) -> dict:
    """Print the benchmark's single JSON object (and write it to ``out``)."""
    record = {"benchmark": benchmark, "machine": machine_info(device),
              "settings": settings or {}, "results": results, "ratios": ratios}
    text = json.dumps(record, indent=2, sort_keys=False, default=float)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    sys.stdout.flush()
    return record
