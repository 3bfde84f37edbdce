"""Where orch's remaining error at many streams comes from: the synthetic server's own delay in
noticing a request, or the client's delay in reading the last event.

    python benchmarks/driver_lag.py [--streams 256] [--requests 512] [--runs 5]

Both processes read CLOCK_MONOTONIC (Python's perf_counter and monotonic are that clock on
Linux), so the server's per-request span (when the request's bytes arrived, when it wrote the
last event; GET /stats?spans=1, matched by the request's "user" field) can be set against the
client's t_start and t_end for each request:
  pickup  server arrival - client t_start   (the server's loop was busy elsewhere)
  tail    client t_end - server last write  (the client's loop was busy elsewhere)
The server is pinned to CPU 1 and the client to CPU 0, as in harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import CLIENT_CPU, SyntheticServer  # noqa: E402

from orchestrator.measure.driver import RequestSpec, request_body, run_batch  # noqa: E402
from orchestrator.measure.prompts import Prompt  # noqa: E402
from orchestrator.types.scenario import Workload


def one_run(url: str, rate: float, streams: int, requests: int, max_tokens: int) -> dict:
    wl = Workload(max_tokens=max_tokens)
    specs = [RequestSpec(Prompt("p", str(i), "hello"), "measured", streams, i) for i in range(requests)]
    httpx.get(url + "/stats", params={"reset": 1})
    recs = asyncio.run(run_batch(url, "completions", specs, streams, lambda s: {
        **request_body("completions", s.prompt.text, "synthetic", wl, {}), "user": str(s.repeat)}, 600, lambda r: None))
    stats = httpx.get(url + "/stats", params={"spans": 1}).json()
    spans = {user: (arrived, last) for user, arrived, last in stats["spans"]}
    out = {"pickup_ms": [], "tail_ms": [], "error_pct": []}
    for r in recs:
        arrived, last = spans[str(r.repeat)]
        out["pickup_ms"].append(1000 * (arrived - r.t_start))
        out["tail_ms"].append(1000 * (r.t_end - last))
        out["error_pct"].append(100 * (r.e2e_tok_s / rate - 1))
    out["server_late_ms"] = stats["max_late_ms"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    print(f"{args.streams} streams, {args.requests} requests of {args.max_tokens} tokens at {args.rate:g} tok/s, "
          "1 token per chunk; per run, median / max over requests")
    print("| run | pickup ms (server) | tail ms (client) | orch error % (median / worst) | server late ms |")
    print("|---|---|---|---|---|")
    with SyntheticServer(args.rate, 1) as server:
        for i in range(args.runs):
            r = one_run(server.url, args.rate, args.streams, args.requests, args.max_tokens)
            med = {k: statistics.median(v) for k, v in r.items() if isinstance(v, list)}
            print(f"| {i + 1} | {med['pickup_ms']:.1f} / {max(r['pickup_ms']):.1f} | {med['tail_ms']:.1f} / "
                  f"{max(r['tail_ms']):.1f} | {med['error_pct']:+.2f} / {min(r['error_pct']):+.2f} | "
                  f"{r['server_late_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
