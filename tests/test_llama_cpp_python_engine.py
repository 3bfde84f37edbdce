"""llama-cpp-python: command line, the install check at validation, and token counts through
its tokenizer (its streams carry no usage). No server is started here."""

import asyncio
import json
from pathlib import Path

import httpx
from click.testing import CliRunner

from engines import ENGINES
from orchestrator.cli import cli
from orchestrator.driver import RequestSpec, run_batch
from orchestrator.models import ResolvedModel
from orchestrator.prompts import Prompt
from orchestrator.scenario import EngineSpec

MODEL = ResolvedModel("m", path=Path("/models/m.gguf"))
PY = "/cache/llama-cpp-python/venv/bin/python"


def spec() -> EngineSpec:
    return EngineSpec(name="lcp", kind="llama-cpp-python", model="gemma-3-270m", binary=PY,
                      speculation={"method": "prompt-lookup-decoding", "n_spec": [0, 10]}, args=["--n_ctx", "2048"])


def test_prompt_lookup_depth_is_the_number_of_predicted_tokens():
    plan = ENGINES["llama-cpp-python"](spec()).plan(10, MODEL, 8123, 1)
    assert plan.argv == [PY, "-m", "llama_cpp.server", "--model", "/models/m.gguf", "--model_alias", "m.gguf",
                         "--host", "127.0.0.1", "--port", "8123", "--draft_model", "prompt-lookup-decoding",
                         "--draft_model_num_pred_tokens", "10", "--n_ctx", "2048"]
    assert plan.health_path == "/v1/models"
    baseline = ENGINES["llama-cpp-python"](spec()).plan(0, MODEL, 8123, 1).argv
    assert "--draft_model" not in baseline and "--draft_model_num_pred_tokens" not in baseline


def test_a_sweep_naming_it_without_it_installed_fails_at_validation_with_the_install_command(
        tmp_path, no_processes, monkeypatch):
    monkeypatch.setenv("ORCH_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "s.toml").write_text(
        'name = "s"\n[[engines]]\nname = "lcp"\nkind = "llama-cpp-python"\nmodel = "gemma-3-270m"\n'
        '[engines.speculation]\nmethod = "prompt-lookup-decoding"\nn_spec = [0, 8]\n')
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output == ("Error: engine 'lcp': llama-cpp-python not found on PATH or in orch's cache; "
                             "run `orch engines install llama-cpp-python` or set binary = "
                             "\"/path/to/llama-cpp-python\"\n")
    assert not (tmp_path / "r").exists()


def test_tokens_are_counted_by_the_servers_tokenizer_after_the_clock_stops(monkeypatch):
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path)
        if req.method == "GET":  # the driver opens its connection before the clock starts
            return httpx.Response(200, json={"data": []})
        body = json.loads(req.content)
        if req.url.path == "/extras/tokenize":  # a BOS token for any input, then one per word
            return httpx.Response(200, json={"tokens": [1] + [7] * len(body["input"].split())})
        chunks = "".join(f"data: {json.dumps({'choices': [{'text': w, 'index': 0}]})}\n\n"
                         for w in ("one", " two", " three"))
        return httpx.Response(200, content=chunks + "data: [DONE]\n\n", headers={"content-type": "text/event-stream"})

    real = httpx.AsyncClient
    monkeypatch.setattr(httpx, "AsyncClient", lambda *a, **k: real(*a, **k, transport=httpx.MockTransport(handler)))
    spec = RequestSpec(Prompt("p", "x", "hello"), "measured", 1, 0)
    (rec,) = asyncio.run(run_batch("http://t", "completions", [spec], 1, lambda s: {"prompt": "x"}, 10,
                                   lambda r: None, tokenize_path="/extras/tokenize"))
    assert seen == ["/v1/models", "/v1/completions", "/extras/tokenize", "/extras/tokenize"]
    assert rec["ok"] and (rec["completion_tokens"], rec["completion_tokens_source"]) == (3, "retokenized")
    assert rec["e2e_tok_s"] == 3 / (rec["t_end"] - rec["t_start"])
