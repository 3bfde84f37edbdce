"""What telemetry costs, and whether it moves what it measures.

    python benchmarks/telemetry_overhead.py [--seconds 5] [--runs 3]

1. The sampler thread's own CPU time (time.thread_time) per second of sampling, against a server
   process with 0, 8 and 32 children (vLLM runs an engine core and workers beside its API
   server), at 10 Hz (the default) and 100 Hz: how much of a core the sampler takes.
2. A server of known rate (benchmarks/synthetic_server.py, pinned to CPU 1; the client on CPU 0,
   as in harness.py) measured by orch's driver with and without a 10 Hz sampler on that
   server's process, runs alternating: orch's median and worst e2e tok/s error against the true
   rate, both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import CLIENT_CPU, SyntheticServer  # noqa: E402

from orchestrator.measure.driver import RequestSpec, request_body, run_batch  # noqa: E402
from orchestrator.measure.prompts import Prompt  # noqa: E402
from orchestrator.types.scenario import Workload
from orchestrator.telemetry.sampler import Sampler  # noqa: E402
from orchestrator.telemetry.sources import ProcessTree, Rapl  # noqa: E402

TREE = "import subprocess, sys, time\nkids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']) " \
       "for _ in range(int(sys.argv[1]))]\ntime.sleep(600)"


def sampler_cost(children: int, interval_s: float, seconds: float) -> tuple[float, float]:
    """(sampler CPU ms per second, microseconds per sample) over `seconds` of sampling."""
    proc = subprocess.Popen([sys.executable, "-c", TREE, str(children)])
    time.sleep(1.0 + 0.05 * children)  # the children start
    try:
        sampler = Sampler([ProcessTree(proc.pid), Rapl()], interval_s)
        with sampler as samples:
            time.sleep(seconds)
        return 1000 * samples.sampler_cpu_s / seconds, 1e6 * samples.sampler_cpu_s / max(1, len(samples.rows) - 2)
    finally:
        for p in ProcessTree(proc.pid)._members():
            p.kill()


def measured_error(url: str, rate: float, streams: int, requests: int, max_tokens: int, pid: int | None) -> list[float]:
    wl = Workload(max_tokens=max_tokens)
    specs = [RequestSpec(Prompt("p", str(i), "hello"), "measured", streams, i) for i in range(requests)]
    batch = run_batch(url, "completions", specs, streams, lambda s: request_body("completions", s.prompt.text,
                                                                                "synthetic", wl, {}), 600, lambda r: None)
    if pid is None:
        recs = asyncio.run(batch)
    else:
        with Sampler([ProcessTree(pid)], 0.1):
            recs = asyncio.run(batch)
    return [100 * (r.e2e_tok_s / rate - 1) for r in recs if r.ok]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    print(f"1. sampler CPU per second of sampling ({args.seconds:g} s each; process tree + RAPL read per sample)")
    print("| children | interval | sampler CPU ms/s | % of one core | us per sample |")
    print("|---|---|---|---|---|")
    for children in (0, 8, 32):
        for interval in (0.1, 0.01):
            ms, us = sampler_cost(children, interval, args.seconds)
            print(f"| {children} | {interval * 1000:g} ms | {ms:.2f} | {ms / 10:.2f} | {us:.0f} |", flush=True)
    os.sched_setaffinity(0, {CLIENT_CPU})
    print(f"\n2. orch's e2e tok/s error against a server of known rate ({args.rate:g} tok/s, {args.streams} streams, "
          f"{args.requests} requests of {args.max_tokens} tokens), without and with a 10 Hz sampler on the server")
    print("| run | sampler | median error % | worst error % |")
    print("|---|---|---|---|")
    with SyntheticServer(args.rate, 1) as server:
        for i in range(args.runs):
            for pid in (None, server.proc.pid):
                errs = measured_error(server.url, args.rate, args.streams, args.requests, args.max_tokens, pid)
                print(f"| {i + 1} | {'on' if pid else 'off'} | {statistics.median(errs):+.2f} | "
                      f"{max(errs, key=abs):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
