"""Sweep wall time against the number of devices (docs/performance.md §4).

Runs the same scenario three ways and prints what each took, timed from outside:
  1. one cell at a time (today's sweep), the server on every core;
  2. two devices of this host, no Ray: placement.cores = one core each;
  3. a real local Ray cluster: a head and a second node process, each declaring one device
     (`orch_device`) of one core (ORCH_CORES), the cells as Ray tasks.
For each: the wall time, the cells' summed phases, and each cell's median e2e tok/s, so that
what sharing the host cost each cell is beside what running side by side saved.

    python benchmarks/side_by_side.py                     # scenarios/n_spec.toml, about 10 minutes on 2 cores
    python benchmarks/side_by_side.py --modes devices     # one of them
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORCH = [sys.executable, "-c", "from orchestrator.cli import main; main()"]
RAY = str(Path(sys.executable).with_name("ray"))


def sweep(scenario: str, out: Path, extra: list[str]) -> tuple[float, Path, int]:
    t0 = time.monotonic()
    done = subprocess.run([*ORCH, "sweep", scenario, "--out", str(out), *extra], capture_output=True, text=True)
    wall = time.monotonic() - t0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return wall, run, done.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], cores: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ORCH_CORES": cores}
    return subprocess.Popen([RAY, "start", *args, "--num-cpus", "1", "--resources", '{"orch_device": 1}',
                             "--object-store-memory", str(80 * 2**20), "--disable-usage-stats", "--block"],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def with_cluster(run):
    port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="orch-ray-"))
    nodes = [start_node(["--head", "--port", str(port), "--include-dashboard", "false"], "0", tmp / "head.log")]
    try:
        for _ in range(90):
            if socket.socket().connect_ex(("127.0.0.1", port)) == 0:
                break
            time.sleep(1)
        nodes.append(start_node(["--address", f"127.0.0.1:{port}"], "1", tmp / "second.log"))
        time.sleep(10)  # the second node registers with the head
        return run(port)
    finally:
        for p in nodes:
            os.killpg(p.pid, signal.SIGTERM)
        for p in nodes:
            p.wait(60)


def cells(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "cells.jsonl").read_text().splitlines()]


def rates(run: Path) -> dict[str, float]:
    by: dict[str, list[float]] = {}
    for ln in (run / "requests.jsonl").read_text().splitlines():
        r = json.loads(ln)
        if r["phase"] == "measured" and r["ok"] and r.get("e2e_tok_s"):
            by.setdefault(r["cell_id"], []).append(r["e2e_tok_s"])
    return {c: statistics.median(v) for c, v in sorted(by.items())}


def report(mode: str, wall: float, run: Path, rc: int) -> None:
    cs = cells(run)
    phases = {k: sum(c["phases"][k] for c in cs if c.get("phases")) for k in ("ready_s", "warmup_s", "measured_s")}
    busy = sum(c.get("seconds") or 0 for c in cs)
    where = sorted({(c.get("placement") or {}).get("node", "this host") for c in cs})
    print(f"{mode}: wall {wall:.1f} s, exit {rc}, {len(cs)} cells on {len(where)} node(s); cells' own seconds "
          f"summed {busy:.1f} (ready {phases['ready_s']:.1f}, warm-up {phases['warmup_s']:.1f}, measured "
          f"{phases['measured_s']:.1f}); run {run}")
    for cell, tok_s in rates(run).items():
        print(f"  {cell}: median e2e {tok_s:.1f} tok/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="scenarios/n_spec.toml")
    ap.add_argument("--modes", nargs="+", default=["sequential", "devices", "ray"],
                    choices=["sequential", "devices", "ray"])
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="orch-side-by-side-"))
    walls = {}
    for mode in args.modes:
        folder = out / mode
        folder.mkdir()
        if mode == "sequential":
            wall, run, rc = sweep(args.scenario, folder, [])
        elif mode == "devices":
            wall, run, rc = sweep(args.scenario, folder, ["--set", 'placement.cores=["0", "1"]'])
        else:
            wall, run, rc = with_cluster(lambda port, folder=folder: sweep(args.scenario, folder, [
                "--cluster", f"127.0.0.1:{port}", "--set", 'placement.resource="orch_device"']))
        walls[mode] = wall
        report(mode, wall, run, rc)
    if "sequential" in walls:
        for mode, wall in walls.items():
            print(f"wall time {mode} / sequential: {wall / walls['sequential']:.2f}")


if __name__ == "__main__":
    main()
