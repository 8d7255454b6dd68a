"""``pyro-dgm compare --quick`` beside a CPU-bound process: does the job still finish?

Before the comparison set its own thread count, each of the two NUTS chain processes ran
torch with the default number of threads (the machine's cores); on 2 cores with one core
taken by another job, ``--quick`` took over 300 s instead of 45 s (oversubscription). Now
``pyro-dgm compare`` runs with ``--threads`` = cores / chains (1 here), inherited by the
chain processes. This benchmark times the quick job alone and with a busy-loop process
pinning one core, each as a fresh ``python -m pyro_dgm compare --quick`` subprocess (imports
included), and, for contrast, the busy case with torch's default thread count forced
(``--threads`` = cores).

    python -m benchmarks.compare_busy            # alone, busy, busy + default threads
    python -m benchmarks.compare_busy --quick    # busy only (about a minute)

Goal (issue 16): under 60 s with one core busy, on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from benchmarks._common import emit, parser

BUSY_LOOP = "while True:\n    pass\n"


def time_quick_compare(*, busy: bool, threads: int | None = None) -> float:
    """Wall seconds of one ``pyro-dgm compare --quick`` subprocess."""
    burner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pyro_dgm", "compare", "--quick", "--no-progress",
                   "--out", os.path.join(tmp, "report")]
            if threads is not None:
                cmd += ["--threads", str(threads)]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            return time.perf_counter() - start
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    results = {"busy_default_s": time_quick_compare(busy=True)}
    ratios = {}
    if not args.quick:
        results["alone_default_s"] = time_quick_compare(busy=False)
        cores = os.cpu_count() or 1
        results["busy_threads_cores_s"] = time_quick_compare(busy=True, threads=cores)
        ratios["busy_vs_alone"] = results["busy_default_s"] / results["alone_default_s"]
        ratios["busy_default_vs_busy_threads_cores"] = (results["busy_default_s"]
                                                        / results["busy_threads_cores_s"])
    return emit("compare_busy", results, ratios, out=args.out,
                settings={"command": "pyro-dgm compare --quick", "busy_processes": 1,
                          # compare's default: cores / chains (the quick job's 2 NUTS chains)
                          "threads_default": max(1, (os.cpu_count() or 1) // 2),
                          "threads_forced": os.cpu_count() or 1, "goal_busy_s": 60})


if __name__ == "__main__":
    main()
