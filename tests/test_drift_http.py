"""Drift through the whole sweep: a fake llama-server over HTTP that slows by a known 20%.

The fake is a script given to the llama-server engine as its binary (the only fake here: a
machine whose speed drifts by a known amount cannot be had on demand). It reads its depth from
the flags orch gives it (`--spec-ngram-mod-n-max K`), counts its own starts in a file, and
streams every response at 200 tok/s x TRUTH[K] x (1 - 0.20 * i / (N - 1)) for its i-th of the
run's N starts: the machine 20% slower at the end than at the start, linearly, whatever order
the depths run in. Everything else is orch's: planner, process launcher, driver, records,
pairs, drift check and report. The same drift is run twice: in 4 blocks (seeded order, pairs
within a block) and in one block of 4 repeats (depth after depth, the deepest last).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli

TRUTH = {0: 1.0, 4: 1.3, 8: 1.6, 16: 1.5}
DRIFT = 0.20

FAKE = r'''
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
argv = sys.argv[1:]
port = int(argv[argv.index("--port") + 1])
k = int(argv[argv.index("--spec-ngram-mod-n-max") + 1]) if "--spec-ngram-mod-n-max" in argv else 0
truth = json.loads(os.environ["FAKE_TRUTH"])[str(k)]
counter, total = os.environ["FAKE_STARTS"], int(os.environ["FAKE_TOTAL"])
with open(counter, "a+") as f:
    f.seek(0); i = len(f.read()); f.write("x")
rate = 200.0 * truth * (1 - float(os.environ["FAKE_DRIFT"]) * i / (total - 1))
TOKENS = 24

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def _send(self, code, data, ctype):
        self.send_response(code); self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        if self.path.startswith("/props"):
            return self._send(200, b'{"default_generation_settings": {}}', "application/json")
        if self.path.startswith("/metrics"):
            return self._send(200, b"", "text/plain; version=0.0.4")
        self._send(200, b'{"status":"ok"}', "application/json")
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close"); self.end_headers()
        t0 = time.perf_counter()
        for j in range(TOKENS):
            time.sleep(max(0.0, t0 + (j + 1) / rate - time.perf_counter()))  # absolute deadlines
            chunk = {"choices": [{"index": 0, "text": " tok", "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode()); self.wfile.flush()
        end = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
               "usage": {"prompt_tokens": 5, "completion_tokens": TOKENS}}
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode()); self.wfile.flush()

ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def sweep(tmp_path: Path, name: str, blocks: int, repeats: int, drift: float = DRIFT) -> Path:
    fake = tmp_path / "llama-server"
    fake.write_text(f"#!{sys.executable}\n{FAKE}")
    fake.chmod(0o755)
    starts = tmp_path / f"{name}.starts"
    truth = "{" + ", ".join(f'\\"{k}\\": {v}' for k, v in TRUTH.items()) + "}"
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\n[workload]\nprompts = ["seeds"]\nmax_tokens = 24\nwarmup = 0\nrepeats = {repeats}\n'
        f'blocks = {blocks}\nseed = 7\n[telemetry]\nenabled = false\n'
        f'[[engines]]\nname = "fake"\nkind = "llama-server"\nmodel = "{fake}"\napi = "completions"\n'
        f'binary = "{fake}"\nready_timeout_s = 30\n'
        f'env = {{ FAKE_TRUTH = "{truth}", FAKE_STARTS = "{starts}", FAKE_TOTAL = "{len(TRUTH) * blocks}", '
        f'FAKE_DRIFT = "{drift}" }}\n'
        f'[engines.speculation]\nmethod = "ngram-mod"\nn_spec = {sorted(TRUTH)}\n')
    out = tmp_path / f"{name}-runs"
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(starts.read_text()) == len(TRUTH) * blocks  # every start counted itself
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name != "compare"]
    return run


def speedup(run: Path, n_spec: int) -> float:
    with open(run / "summary.csv") as f:
        row = next(r for r in csv.DictReader(f) if int(r["n_spec"]) == n_spec)
    return float(row["speedup"])


def test_a_known_drift_is_reported_and_blocks_keep_the_speedup_within_3_percent(tmp_path):
    """The truth is the same fake with no drift: the e2e speedup it measures is a little under
    TRUTH (a request's HTTP time is not sped up by drafting), and drift must not move it further."""
    still = sweep(tmp_path, "still", blocks=1, repeats=4, drift=0.0)
    blocked = sweep(tmp_path, "blocked", blocks=4, repeats=1)
    fixed = sweep(tmp_path, "fixed", blocks=1, repeats=4)
    head = "\n".join((blocked / "report" / "summary.md").read_text().splitlines()[:12])  # the report's first lines
    assert "DRIFT: fake at c=1: n_spec 0 at the end of the run (block 4) over its start (block 1)" in head, head
    errors = {name: {k: speedup(run, k) / speedup(still, k) - 1 for k in TRUTH if k}
              for name, run in (("blocked", blocked), ("fixed", fixed))}
    print("speedup over the undrifted one - 1, per depth:", {n: {k: f"{e:+.1%}" for k, e in d.items()} for n, d in errors.items()})
    assert all(abs(e) < 0.03 for e in errors["blocked"].values()), errors
    # Depth after depth, n_spec 16 runs last, 20% slower than n_spec 0 ran: its speedup is low by about that.
    assert errors["fixed"][16] < -0.10, errors
