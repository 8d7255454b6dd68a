"""Run every benchmark and write the record: ``benchmarks/results/<name>.json`` + summary.

Every ``benchmarks/<name>.py`` (not starting with ``_``, not this file) runs as
``python -m benchmarks.<name> [--quick]`` in its own subprocess, one after another, with a
per-benchmark timeout and a total time budget (each benchmark may use at most an equal share
of the budget that is left); the one JSON object it prints is stored as
``<name>.json``. A benchmark that fails, times out or prints no JSON gets a record with
``"status"`` and the tail of its stderr instead, and the run goes on. ``summary.md`` has one
table row per benchmark (status, wall and CPU seconds, ratios) and the machine with its
load average (a shared machine makes wall times long; CPU seconds are less affected).

Usage::

    python -m benchmarks.run_all --quick              # every benchmark, < 10 min on 2 cores
    python -m benchmarks.run_all --only mcmc,rbm      # full size, two benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._common import machine_info

__all__ = ["discover", "main", "parse_record", "run_one", "summary_markdown"]

HERE = Path(__file__).resolve().parent


def discover(directory: Path = HERE) -> list[str]:
    """Names of the benchmark modules in ``directory``."""
    return sorted(p.stem for p in directory.glob("*.py")
                  if not p.stem.startswith("_") and p.stem != "run_all")


def parse_record(stdout: str) -> dict | None:
    """The last JSON object with a ``"benchmark"`` key printed on ``stdout``."""
    decoder, found = json.JSONDecoder(), None
    starts = [0] + [i + 1 for i, c in enumerate(stdout) if c == "\n"]
    for start in starts:
        if not stdout.startswith("{", start):
            continue
        try:
            value, _ = decoder.raw_decode(stdout, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and "benchmark" in value:
            found = value
    return found


def run_one(name: str, *, quick: bool, timeout: float, device: str = "cpu",
            cwd: Path = HERE.parent) -> dict:
    """Run one benchmark in a subprocess; its record, or a failure record."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick else [])
    if device != "cpu":
        cmd += ["--device", device]
    start, cpu = time.perf_counter(), _children_cpu()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        return {"benchmark": name, "status": "timeout", "seconds": time.perf_counter() - start,
                "cpu_seconds": _children_cpu() - cpu, "timeout": timeout,
                "stderr_tail": (err or "")[-2000:]}
    times = {"seconds": time.perf_counter() - start, "cpu_seconds": _children_cpu() - cpu}
    record = parse_record(proc.stdout) if proc.returncode == 0 else None
    if record is None:
        status = f"failed (exit {proc.returncode})" if proc.returncode else "no JSON"
        return {"benchmark": name, "status": status, **times,
                "stderr_tail": proc.stderr[-2000:] or proc.stdout[-2000:]}
    record["status"] = "ok"
    record.update(times)
    return record


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def summary_markdown(records: list[dict], *, quick: bool, machine: dict) -> str:
    """The Markdown summary of a run."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Benchmark record ({'quick' if quick else 'full'} run, {when})", "",
             f"Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs, "
             f"Python {machine.get('python')}, torch {machine.get('torch')}, "
             f"pyro {machine.get('pyro')}, device {machine.get('device')}"
             + (f" ({machine['gpu']})" if machine.get("gpu") else "")
             + f"; load average at start {machine.get('load_average')}.", "",
             "| benchmark | status | wall s | CPU s | ratios (ours / theirs) |",
             "|---|---|---:|---:|---|"]
    for r in records:
        ratios = ", ".join(f"{k} = {_fmt(v)}" for k, v in (r.get("ratios") or {}).items())
        lines.append(f"| {r['benchmark']} | {r['status']} | {r.get('seconds', 0):.1f} | "
                     f"{r.get('cpu_seconds', 0):.1f} | {ratios or '-'} |")
    failed = [r for r in records if r.get("stderr_tail")]
    for r in failed:
        tail = (r.get("stderr_tail") or "").strip().splitlines()[-5:]
        lines += ["", f"## {r['benchmark']}: {r['status']}", "", "```", *tail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="every benchmark's --quick mode")
    p.add_argument("--only", default=None, help="comma-separated benchmark names")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per benchmark (default 150 quick, 3600 full)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default 570 quick, none full)")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    p.add_argument("--strict", action="store_true", help="exit 1 when a benchmark failed")
    args = p.parse_args(argv)
    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            p.error(f"--only: unknown benchmark(s) {unknown}; known: {names}")
        names = wanted
    timeout = args.timeout or (150.0 if args.quick else 3600.0)
    budget = args.budget or (570.0 if args.quick else float("inf"))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args.device)
    machine["load_average"] = [round(x, 1) for x in os.getloadavg()]
    began, records = time.perf_counter(), []
    for i, name in enumerate(names):
        # an equal share of what is left, so that every benchmark gets its turn
        share = (budget - (time.perf_counter() - began)) / (len(names) - i)
        if share < 5:
            record = {"benchmark": name, "status": "skipped (time budget spent)",
                      "seconds": 0.0}
        else:
            print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
            record = run_one(name, quick=args.quick, timeout=min(timeout, share),
                             device=args.device)
        print(f"[run_all] {name}: {record['status']} ({record['seconds']:.1f} s)",
              file=sys.stderr, flush=True)
        (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
        records.append(record)
    (out / "summary.md").write_text(summary_markdown(records, quick=args.quick,
                                                     machine=machine))
    total = time.perf_counter() - began
    print(f"[run_all] {len(records)} benchmarks in {total:.0f} s; "
          f"{sum(r['status'] == 'ok' for r in records)} ok; wrote {out}", file=sys.stderr)
    return 1 if args.strict and any(r["status"] != "ok" for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
