"""Fuzz: `orch bench --url` against a hostile server (tests/support/hostile_server.py) that answers every
request with a seeded mutation of a valid stream: SSE framing, shapes, types, values, cut points,
HTTP status, streams that never end, responses too big to buffer.

What must hold: no traceback; one row per request the server received; a LEGAL stream's row is
ok with the server's token count and text; every other row is an error with a message; no row
holds a non-finite number or a count that is not one; no request outlives its deadline; and the
whole run ends within BOUND_S (stated below).

The first test is the claim, end to end. The second sends each label alone through
run_batch, to name the mutation that breaks the driver when the first fails.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.measure.driver import RequestSpec, request_body, run_batch
from orchestrator.measure.prompts import Prompt
from orchestrator.types.scenario import Workload
from engines.llama_server import LlamaServer  # llama.cpp's timings: the stream counts these tests feed

from .support.hostile_server import LABELS, RARE, RARE_REPEATS, Expect, HostileServer, min_cases

TIMINGS = LlamaServer.stream_counts

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [1, 2, 3]  # each run: 210 requests, every label; ~12 s with a driver that keeps its deadlines
TIMEOUT_S = 2.0  # workload.request_timeout_s: meant to bound each request, first byte to last
CONCURRENCY = 4
MAX_TOKENS = 16
SLACK_S = 1.0  # how late after its deadline a request may end (event loop and 2 shared cores)
MAX_ROW_BYTES = 1 << 20  # a row bigger than this means the driver kept a huge response
# The time bound. Every request but the slow ones (DEADLINE, HUGE: each may use its whole
# deadline) takes milliseconds. The slow ones spread over the workers, and the worker that gets
# the last may need one more deadline. Then orch's own start-up and its pandas/matplotlib report.
SLOW_CASES = RARE_REPEATS * len(RARE)
STARTUP_AND_REPORT_S = 30.0  # measured 7 s on a 2-core machine (a run of 212 clean streams)
BOUND_S = SLOW_CASES * TIMEOUT_S / CONCURRENCY + TIMEOUT_S + STARTUP_AND_REPORT_S
HANG_S = 30.0  # past the bound, the run is killed and reported as hung


# ---------------------------------------------------------------- what a row must be


def row_problems(row: dict | None, expect: Expect | None) -> list[str]:
    """Everything wrong with one request's row, given what the server sent."""
    if expect is None:
        return ["a row for a prompt the server never received"]
    if row is None:
        return ["no row"]
    out = _outcome_problems(row, expect)
    for key in ("completion_tokens", "prompt_tokens"):
        v = row.get(key)
        if v is not None and not (type(v) is int and 0 <= v < 2**31):
            out.append(f"{key} = {v!r} is not a count")
    bad = [k for k, v in row.items() if not _finite(v)]  # a row in memory may hold NaN; a file may not
    if bad:
        out.append(f"non-finite numbers in {bad}")
    took = _duration(row)
    if took is not None and took > TIMEOUT_S + SLACK_S:
        out.append(f"request took {took:.1f} s; its deadline is {TIMEOUT_S:g} s")
    size = row.get("_bytes") or len(json.dumps(row, default=str))
    if size > MAX_ROW_BYTES:
        out.append(f"a row of {size / (1 << 20):.1f} MiB: the driver kept a huge response")
    return out


def _outcome_problems(row: dict, expect: Expect) -> list[str]:
    if not expect.ok:
        out = [] if row.get("ok") is False else [
            f"{expect.cls} response recorded ok=True (completion_tokens={row.get('completion_tokens')!r})"]
        if not (isinstance(row.get("error"), str) and row["error"].strip()):
            out.append(f"error is {row.get('error')!r}, not a message")
        return out
    if row.get("ok") is not True:
        return [f"legal stream recorded as an error: {str(row.get('error'))[:160]!r}"]
    if row.get("completion_tokens") != expect.tokens:
        return [f"completion_tokens {row.get('completion_tokens')!r}, server sent {expect.tokens}"]
    if row.get("text") != expect.text:
        return [f"text {str(row.get('text'))[:60]!r} is not the stream's {expect.text[:60]!r}"]
    return []


def _finite(v) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, dict):
        return all(_finite(x) for x in v.values())
    if isinstance(v, list):
        return all(_finite(x) for x in v)
    return True


def _duration(row: dict) -> float | None:
    t0, t1 = row.get("t_start"), row.get("t_end")
    ok = all(isinstance(t, (int, float)) and math.isfinite(t) for t in (t0, t1))
    return t1 - t0 if ok else None


# ---------------------------------------------------------------- end to end: orch bench --url


def write_inputs(folder: Path, n: int) -> Path:
    lines = "".join(json.dumps({"id": f"p{i}", "prompt": f"fuzz case {i}"}) + "\n" for i in range(n))
    (folder / "fuzz.jsonl").write_text(lines)
    scen = folder / "fuzz.toml"
    scen.write_text(f'name = "fuzz"\n[workload]\nprompts = ["fuzz.jsonl"]\nmax_tokens = {MAX_TOKENS}\n'
                    f"warmup = 0\nrepeats = 1\nconcurrency = [{CONCURRENCY}]\n"
                    f"request_timeout_s = {TIMEOUT_S:g}\n")
    return scen


def run_bench(url: str, scen: Path, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    argv = [sys.executable, "-c", "from orchestrator.cli import main; main()", "bench", "--url", url,
            "--model", "fuzz-model", "--api", "completions", "--scenario", str(scen), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=BOUND_S + HANG_S,
                              cwd=scen.parent, env=env)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        pytest.fail(f"orch bench hung: killed after {BOUND_S + HANG_S:.0f} s (bound {BOUND_S:.0f} s); "
                    f"stderr tail:\n{tail.decode(errors='replace') if isinstance(tail, bytes) else tail}")
    return proc, time.monotonic() - t0


def read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """The rows (each with its size on disk under "_bytes"), and the lines that do not parse or
    hold NaN/Infinity."""
    rows, problems = [], []
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    for n, line in enumerate(text.splitlines(), 1):
        try:
            rows.append({**json.loads(line, parse_constant=_refuse_constant), "_bytes": len(line.encode())})
        except ValueError as exc:
            problems.append(f"requests.jsonl:{n}: {exc}")
    return rows, problems


def _refuse_constant(name: str):
    raise ValueError(f"non-finite number {name} in a row")


def summary_count(run: Path) -> int:
    with open(run / "summary.csv", newline="") as f:
        return sum(int(float(r["requests_ok"] or 0)) + int(float(r["requests_failed"] or 0))
                   for r in csv.DictReader(f))


def process_problems(proc: subprocess.CompletedProcess, elapsed: float) -> list[str]:
    out = []
    if proc.returncode not in (0, 1):
        out.append(f"exit code {proc.returncode}")
    for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        if "Traceback" in stream:
            tail = stream[stream.rindex("Traceback"):][-2500:]
            out.append(f"a traceback on {name}:\n{tail}")
    if elapsed >= BOUND_S:
        out.append(f"the run took {elapsed:.0f} s; the bound is {BOUND_S:.0f} s")
    return out


def rows_problems(rows: list[dict], server: HostileServer, n: int) -> list[str]:
    text_of = {f"p{i}": f"fuzz case {i}" for i in range(n)}
    sent = {pid for pid, text in text_of.items() if text in server.expects}
    got = Counter(r.get("prompt_id") for r in rows)
    out = []
    if server.posts != n:
        out.append(f"the server received {server.posts} POSTs for {n} prompts")
    if len(rows) != server.posts or set(got) != sent:
        out.append(f"{len(rows)} rows for {server.posts} POSTs; without a row: "
                   f"{sorted(sent - set(got))[:20]}; rows the server never saw: {sorted(set(got) - sent)[:20]}; "
                   f"duplicates: {[p for p, c in got.items() if c > 1][:20]}")
    for row in rows:
        expect = server.expects.get(text_of.get(row.get("prompt_id"), ""))
        tag = f"{row.get('prompt_id')} [{expect.label} {expect.cls}; {expect.detail}]" if expect else row.get("prompt_id")
        out += [f"{tag}: {p}" for p in row_problems(row, expect)]
    return out


def report(problems: list[str]) -> str:
    labels = Counter(p.split("[", 1)[1].split(" ", 1)[0] for p in problems if "[" in p.split(":", 1)[0])
    return (f"{len(problems)} problems; per label: {dict(labels.most_common())}\n" + "\n".join(problems[:80]))


@pytest.mark.parametrize("seed", SEEDS)
def test_orch_bench_against_a_hostile_server(tmp_path, seed):
    n = min_cases()  # every common label 3 times, each DEADLINE and HUGE label twice, http_401 once (last)
    scen, out = write_inputs(tmp_path, n), tmp_path / "out"
    with HostileServer(seed, n) as server:
        proc, elapsed = run_bench(server.url, scen, out)
    problems = process_problems(proc, elapsed)
    runs = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    if len(runs) != 1:
        problems.append(f"{len(runs)} run folders under {out}")
    rows, line_problems = read_rows(runs[0] / "requests.jsonl") if runs else ([], [])
    problems += line_problems + rows_problems(rows, server, n)
    if runs and (runs[0] / "summary.csv").is_file():
        if summary_count(runs[0]) != len(rows):
            problems.append(f"summary.csv counts {summary_count(runs[0])} requests; requests.jsonl has {len(rows)}")
    elif runs:
        problems.append("no summary.csv")
    assert not problems, report(problems)


# ---------------------------------------------------------------- each label alone, through run_batch


PROMPT = "fuzz case 0"


def drive_one(server: HostileServer) -> tuple[dict | None, float, str | None]:
    """One request through run_batch: (record, seconds, what went wrong if it raised or hung)."""
    spec = RequestSpec(Prompt("fuzz", "p0", PROMPT), "measured", 1, 0)
    workload = Workload(max_tokens=MAX_TOKENS)

    def body(s):
        return request_body("completions", s.prompt.text, "fuzz-model", workload, {})

    async def go():
        return await asyncio.wait_for(run_batch(server.url, "completions", [spec], 1, body, TIMEOUT_S,
                                                lambda r: None, counts=TIMINGS), TIMEOUT_S + SLACK_S + 2)
    t0 = time.monotonic()
    try:
        (rec,) = [r.model_dump() for r in asyncio.run(go())]  # checked as a requests.jsonl row is
    except TimeoutError:
        return None, time.monotonic() - t0, f"hung: no record {TIMEOUT_S + SLACK_S + 2:g} s after the request"
    except Exception:  # the claim under test: nothing a server sends may raise out of the driver
        return None, time.monotonic() - t0, traceback.format_exc(limit=-4)
    return rec, time.monotonic() - t0, None


@pytest.mark.parametrize("label", list(LABELS))
def test_each_mutation_alone_through_the_driver(label):
    with HostileServer(seed=SEEDS[0], only=label) as server:
        rec, took, failure = drive_one(server)
        expect = server.expects.get(PROMPT)
    assert failure is None, f"{label} ({expect and expect.detail}): {failure}"
    problems = row_problems(rec, expect)
    if took > TIMEOUT_S + SLACK_S:
        problems.append(f"run_batch took {took:.1f} s; the deadline is {TIMEOUT_S:g} s")
    assert not problems, f"{label} ({expect.detail}): {problems}; error={rec.get('error')!r}"
