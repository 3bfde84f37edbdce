"""Secrets from the scenario: a key given as a server flag or in an engine's `env`, and one a
server echoes back (its log, a /metrics label), is written nowhere and printed nowhere. The
server is a fake llama-server (a script, fault injection: a server that repeats every secret it
is given); the sweep, its records, report and logs are orch's own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli

FLAG_KEY = "sk-flag-secret-7c1d9e"
EQ_KEY = "hf_equals_secret_55aa"
ENV_KEY = "env-token-secret-3b2f"

FAKE = r'''
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
argv = sys.argv[1:]
print("starting with", " ".join(argv), flush=True)           # a server that prints its command line
print("environment", json.dumps(dict(os.environ)), flush=True)  # and its environment
port = int(argv[argv.index("--port") + 1])
key = argv[argv.index("--api-key") + 1]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        print("request", self.path, "with key", key, flush=True)
    def _send(self, code, data, ctype):
        self.send_response(code); self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        if self.path.startswith("/metrics"):
            text = ('# TYPE llamacpp:tokens_predicted_total counter\n'
                    'llamacpp:tokens_predicted_total{api_key="%s"} 8\n' % key)
            return self._send(200, text.encode(), "text/plain; version=0.0.4")
        if self.path.startswith("/props"):
            return self._send(200, json.dumps({"api_key": key, "default_generation_settings": {}}).encode(),
                              "application/json")
        self._send(200, b'{"status":"ok"}', "application/json")
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close"); self.end_headers()
        for i in range(4):
            chunk = {"choices": [{"index": 0, "text": " tok", "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode()); self.wfile.flush(); time.sleep(0.01)
        end = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 4}}
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode()); self.wfile.flush()

ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def scenario(tmp_path: Path) -> Path:
    fake = tmp_path / "llama-server"
    fake.write_text(f"#!{sys.executable}\n{FAKE}")
    fake.chmod(0o755)
    path = tmp_path / "secret.toml"
    path.write_text(
        'name = "secret"\n[workload]\nprompts = ["repeat"]\nmax_tokens = 4\nwarmup = 0\nrepeats = 1\n'
        f'[[engines]]\nname = "fake"\nkind = "llama-server"\nmodel = "{fake}"\napi = "completions"\n'
        f'binary = "{fake}"\nargs = ["--api-key", "{FLAG_KEY}", "--hf-token={EQ_KEY}"]\n'
        f'env = {{ HF_TOKEN = "{ENV_KEY}", LOG_LEVEL = "debug" }}\nready_timeout_s = 30\n'
        '[engines.speculation]\nmethod = "ngram-mod"\nn_spec = [0, 4]\n')
    return path


def leaks(folder: Path) -> list[str]:
    return [f"{f}: {k}" for f in folder.rglob("*") if f.is_file() for k in (FLAG_KEY, EQ_KEY, ENV_KEY)
            if k.encode() in f.read_bytes()]


def test_a_key_in_server_flags_or_env_is_never_printed_by_the_dry_run(tmp_path):
    result = CliRunner().invoke(cli, ["sweep", str(scenario(tmp_path)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "--api-key [redacted]" in result.output and "--hf-token=[redacted]" in result.output
    assert not any(k in result.output for k in (FLAG_KEY, EQ_KEY, ENV_KEY))


def test_a_key_in_flags_env_logs_metrics_labels_and_props_is_written_and_printed_nowhere(tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(cli, ["sweep", str(scenario(tmp_path)), "--out", str(out)])
    said = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert not any(k in said for k in (FLAG_KEY, EQ_KEY, ENV_KEY)), said
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name != "compare"]
    rows = [json.loads(ln) for ln in (run / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 and all(r["ok"] for r in rows)  # a row for every request (2 cells x 3 prompts)
    logs = list(run.rglob("server*.log"))
    assert logs and all("starting with" in log.read_text() for log in logs)  # the log is there, scrubbed
    assert "--api-key [redacted]" in logs[0].read_text()
    assert (run / "report").is_dir()
    assert leaks(out) == [] and leaks(tmp_path / "runs") == []
