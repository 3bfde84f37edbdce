"""Credentials go with every request orch makes; a refusal fails at once; no secret is written.

The server below checks the Authorization header on every path (readiness, model lookup,
/metrics, /props, completions), as an API gateway does, and echoes what it received in its
401 bodies, as a careless one does."""

import base64
import json
import time
from pathlib import Path

from aiohttp import web
from click.testing import CliRunner

from orchestrator.cli import cli

from .support.threaded_server import ThreadedApp

KEY = "sk-test-7f3a9c2e51"
PASSWORD = "hunter2-pw-x9"


def keyed_server(accept: str, seen: list):
    """Answers only requests whose Authorization header equals `accept`; records (path, header)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        got = request.headers.get("Authorization", "")
        seen.append((request.path, got))
        if got != accept:
            return web.json_response({"error": f"unauthorized; you sent Authorization: {got}"}, status=401)
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "m"}]})
        if request.path == "/metrics":
            return web.Response(text="# TYPE x counter\nx_total 1\n")
        if request.method == "GET":
            return web.json_response({"status": "ok"})
        events = [{"choices": [{"index": 0, "text": " a", "finish_reason": None}]},
                  {"choices": [{"index": 0, "text": " b", "finish_reason": "length"}]},
                  {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return web.Response(body=body.encode(), content_type="text/event-stream")
    return handler


def bench(url: str, out: Path, *extra: str, env: dict | None = None):
    args = ["bench", "--url", url, "--api", "completions", "--out", str(out),
            "--set", "workload.max_tokens=2", "--set", "workload.warmup=1", *extra]
    return CliRunner().invoke(cli, args, env=env or {})


def written(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and p.suffix != ".png")


def test_the_key_goes_with_every_request_and_is_never_written(tmp_path):
    seen = []
    with ThreadedApp(keyed_server(f"Bearer {KEY}", seen)) as server:
        result = bench(server.url, tmp_path / "r", "--api-key-env", "ORCH_TEST_KEY", env={"ORCH_TEST_KEY": KEY})
    assert result.exit_code == 0, result.output
    paths = {p for p, _ in seen}
    assert {"/v1/models", "/metrics", "/v1/completions"} <= paths and ("/health" in paths)
    assert all(h == f"Bearer {KEY}" for _, h in seen)  # readiness, model lookup, metrics, requests
    rows = [json.loads(ln) for ln in next((tmp_path / "r").glob("*/requests.jsonl")).read_text().splitlines()]
    assert len(rows) == 1 + 8 and all(r["ok"] for r in rows)  # one warm-up and the 8 `seeds` prompts
    assert KEY not in written(tmp_path / "r") and KEY not in result.output


def test_no_key_fails_the_cell_at_once_naming_the_fix(tmp_path):
    seen = []
    with ThreadedApp(keyed_server(f"Bearer {KEY}", seen)) as server:
        t0 = time.monotonic()
        result = bench(server.url, tmp_path / "r", "--model", "m")  # past the model lookup, to the cell
        took = time.monotonic() - t0
    assert result.exit_code == 1
    assert took < 30  # the engine's ready_timeout_s is 300: a 401 is not waited out
    cell = json.loads(next((tmp_path / "r").glob("*/cells.jsonl")).read_text())
    assert cell["status"] == "failed"
    assert cell["error"] == ("HTTP 401 from /health: the server refuses orch's credentials; it wants an API key: "
                             "put it in an environment variable and name that with api_key_env "
                             "(orch bench: --api-key-env NAME)")
    assert not any(p == "/v1/completions" for p, _ in seen)  # nothing was sent after the refusal


def test_model_lookup_refused_is_one_line(tmp_path):
    with ThreadedApp(keyed_server(f"Bearer {KEY}", [])) as server:
        result = bench(server.url, tmp_path / "r", "--api-key-env", "ORCH_TEST_KEY",
                       env={"ORCH_TEST_KEY": "sk-wrong-0123456789"})
    assert result.exit_code == 1
    assert result.output == (f"Error: {server.url}/v1/models: HTTP 401 from /v1/models: the server refuses orch's "
                             "credentials; check the API key in $ORCH_TEST_KEY\n")
    assert not (tmp_path / "r").exists()


def test_a_wrong_key_echoed_by_the_server_is_not_written(tmp_path):
    wrong = "sk-wrong-0123456789"
    seen = []

    async def refuse_completions_only(request):  # ready and /metrics answer; requests are refused
        if request.method == "GET":
            return web.json_response({"object": "list", "data": [{"id": "m"}]})
        return await keyed_server(f"Bearer {KEY}", seen)(request)
    with ThreadedApp(refuse_completions_only) as server:
        result = bench(server.url, tmp_path / "r", "--model", "m", "--api-key-env", "ORCH_TEST_KEY",
                       env={"ORCH_TEST_KEY": wrong})
    assert result.exit_code == 1
    run = next((tmp_path / "r").glob("*"))
    cell = json.loads((run / "cells.jsonl").read_text())
    assert cell["error"] == ("HTTP 401 from /v1/completions: the server refuses orch's credentials; "
                             "check the API key in $ORCH_TEST_KEY")
    assert len(seen) == 1  # the warm-up was refused: no measured request followed
    row = json.loads((run / "requests.jsonl").read_text())
    assert row["error"].startswith("HTTP 401: ") and "[redacted]" in row["error"]
    assert wrong not in written(tmp_path / "r") and wrong not in result.output


def test_a_password_in_the_url_is_used_and_never_written_or_printed(tmp_path):
    basic = "Basic " + base64.b64encode(f"me:{PASSWORD}".encode()).decode()
    seen = []
    with ThreadedApp(keyed_server(basic, seen)) as server:
        url = server.url.replace("http://", f"http://me:{PASSWORD}@")
        result = bench(url, tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert seen and all(h == basic for _, h in seen)
    text = written(tmp_path / "r") + result.output
    assert PASSWORD not in text and basic.split()[1] not in text
    cell = json.loads(next((tmp_path / "r").glob("*/cells.jsonl")).read_text())
    assert cell["url"] == server.url.replace("http://", "http://me:***@")
