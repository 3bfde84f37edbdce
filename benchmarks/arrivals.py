"""Open-loop send lateness: orch's schedule (measure/arrivals.py) at a given request rate against
the synthetic server (benchmarks/synthetic_server.py, on its own core), and how late each request
went out against its due time: median, 99th percentile and worst, with the Kolmogorov-Smirnov
test of the drawn gaps against the rate. Target (issue 34): p99 under 5 ms at 50 requests/s on 2 cores.

    python benchmarks/arrivals.py [--rate 50] [--requests 1500] [--cap 256] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(__file__))
from harness import CLIENT_CPU, SyntheticServer  # noqa: E402

from orchestrator.measure.arrivals import arrival_offsets, run_open_loop  # noqa: E402
from orchestrator.measure.driver import RequestSpec  # noqa: E402
from orchestrator.measure.prompts import Prompt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--cap", type=int, default=256, help="requests in flight at most")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--burstiness", type=float, default=1.0)
    args = ap.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    offsets = arrival_offsets(args.rate, args.requests, args.burstiness, seed=0)
    ks = stats.kstest(np.diff(offsets), stats.gamma(a=args.burstiness, scale=1 / (args.rate * args.burstiness)).cdf)
    specs = [RequestSpec(Prompt("bench", str(i), f"p{i}"), "measured", args.cap, 0) for i in range(args.requests)]
    with SyntheticServer(20.0, 1) as server:  # 20 tok/s per stream: each request holds a stream ~3 s
        records = asyncio.run(run_open_loop(
            server.url, "completions", specs, offsets, args.cap,
            lambda s: {"prompt": s.prompt.text, "max_tokens": args.max_tokens, "stream": True}, 60, lambda r: None))
    late_ms = np.array([r.send_late_s for r in records if r.send_late_s is not None]) * 1000
    ok = sum(r.ok for r in records)
    print(f"{args.requests} requests at {args.rate:g}/s (burstiness {args.burstiness:g}, cap {args.cap}), "
          f"{ok} ok; gaps against the rate: KS p = {ks.pvalue:.3f}")
    print(f"send lateness: median {np.median(late_ms):.2f} ms, p99 {np.percentile(late_ms, 99):.2f} ms, "
          f"worst {late_ms.max():.2f} ms (target: p99 under 5 ms)")


if __name__ == "__main__":
    main()
