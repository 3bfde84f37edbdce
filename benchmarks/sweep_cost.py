"""Where a sweep's wall time goes, and how fast orch notices a server is ready.

    python benchmarks/sweep_cost.py                          # scenarios/n_spec.toml, as shipped
    python benchmarks/sweep_cost.py SCENARIO [--set KEY=VALUE ...]
    python benchmarks/sweep_cost.py --readiness-only

Runs `orch sweep` as a user would (a subprocess, timed from outside), then reads the phases each
cell recorded (cells.jsonl: start, ready, warmup, measured, teardown, and orch's own time inside
the cell) and the gaps around the cells (start-up, validation and environment capture before
the first; summary, charts and report after the last). orch's own overhead is everything that is
not a server starting, warming up, answering measured requests or stopping. Target: under 5%.

Readiness: a stand-in server (a Python process that sleeps, then starts answering /health and
writes the CLOCK_MONOTONIC time at which it began to listen) is started 10 times through orch's
own ProcessServer; the lag is the time between the server listening and orch noticing.
Target: within 0.25 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER_PHASES = ("start_s", "ready_s", "warmup_s", "measured_s", "teardown_s")

STAND_IN = """
import http.server, sys, time
time.sleep(float(sys.argv[2]))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
open(sys.argv[3], "w").write(repr(time.monotonic()))
srv.serve_forever()
"""


def sweep_cost(scenario: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", "from orchestrator.cli import main; main()", "sweep", scenario,
               "--out", tmp, *[a for o in overrides for a in ("--set", o)]]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        t1 = time.time()
        if proc.returncode != 0:
            sys.exit(f"orch sweep failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        (run,) = Path(tmp).iterdir()
        cells = [json.loads(ln) for ln in (run / "cells.jsonl").read_text().splitlines()]
    return breakdown(cells, t0, t1)


def breakdown(cells: list[dict], t0: float, t1: float) -> dict:
    wall = t1 - t0
    phases = {p: sum(c["phases"][p] for c in cells) for p in (*SERVER_PHASES, "orch_s")}
    first = min(c["started_at"] for c in cells)
    last_end = max(c["started_at"] + c["seconds"] for c in cells)
    inside = sum(c["seconds"] for c in cells)
    between = (last_end - first) - inside  # between cells, outside any cell's clock
    orch = {"before first cell": first - t0, "inside cells": phases["orch_s"], "between cells": between,
            "after last cell": t1 - last_end}
    return {"wall_s": wall, "cells": len(cells), "server": {p: phases[p] for p in SERVER_PHASES},
            "orch": orch, "orch_total_s": sum(orch.values()),
            "per_engine": per_engine(cells)}


def per_engine(cells: list[dict]) -> dict:
    out: dict = {}
    for c in cells:
        e = out.setdefault(c["engine"], {p: 0.0 for p in (*SERVER_PHASES, "orch_s")})
        for p in e:
            e[p] += c["phases"][p]
    return out


def readiness(runs: int = 10, delay_s: float = 1.5) -> list[float]:
    from engines.plan import ServerPlan
    from orchestrator.launch.launchers import ProcessServer
    from orchestrator.launch.launchers import free_port

    lags = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            port, mark = free_port(), Path(tmp) / f"listen-{i}"
            plan = ServerPlan(argv=[sys.executable, "-c", STAND_IN, str(port), str(delay_s), str(mark)],
                              port=port, health_path="/health", env={})
            with ProcessServer(plan, Path(tmp) / f"log-{i}", ready_timeout_s=30) as server:
                server.wait_ready()
                noticed = time.monotonic()
                lags.append(noticed - float(mark.read_text()))
    return lags


def report(cost: dict | None, lags: list[float]) -> str:
    lines = []
    if cost:
        wall = cost["wall_s"]
        lines += [f"Sweep wall time: {wall:.1f} s over {cost['cells']} cells (orch sweep, timed from outside)", "",
                  "| where | seconds | share of wall time |", "|---|---:|---:|"]
        names = {"start_s": "server process/container start", "ready_s": "server start to ready",
                 "warmup_s": "warm-up requests", "measured_s": "measured requests", "teardown_s": "server stop"}
        for p, label in names.items():
            lines.append(f"| {label} | {cost['server'][p]:.1f} | {100 * cost['server'][p] / wall:.1f}% |")
        for where, s in cost["orch"].items():
            lines.append(f"| orch's own: {where} | {s:.1f} | {100 * s / wall:.1f}% |")
        lines.append(f"| **orch's own, total** | **{cost['orch_total_s']:.1f}** | "
                     f"**{100 * cost['orch_total_s'] / wall:.1f}%** |")
        lines += ["", "Per engine (seconds): " + "; ".join(
            f"{e}: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in ph.items())
            for e, ph in cost["per_engine"].items())]
    if lags:
        lines += ["", f"Readiness noticed after the server began listening ({len(lags)} starts): "
                      f"median {1000 * statistics.median(lags):.0f} ms, max {1000 * max(lags):.0f} ms"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default="scenarios/n_spec.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--readiness-only", action="store_true")
    args = ap.parse_args()
    lags = readiness()
    cost = None if args.readiness_only else sweep_cost(args.scenario, args.overrides)
    print(report(cost, lags))


if __name__ == "__main__":
    main()
