"""llama-cpp-python: command line, the install check at validation, and token counts through
its tokenizer (its streams carry no usage), against a canned local server; no engine is started."""

import asyncio
import time
from pathlib import Path

from aiohttp import web
from click.testing import CliRunner

from engines import ENGINES
from orchestrator.cli import cli
from orchestrator.measure.driver import RequestSpec, run_batch
from engines.plan import ResolvedModel
from orchestrator.measure.prompts import Prompt
from orchestrator.types.scenario import EngineSpec

from .support.canned_server import event_stream, serve, sse

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


def test_tokens_are_counted_by_the_servers_tokenizer_after_the_clock_stops():
    seen, stamps = [], {}  # stamps: the server's perf_counter (the driver's clock: one process, one loop)

    async def handler(request):
        seen.append(request.path)
        if request.method == "GET":  # the driver opens its connection before the clock starts
            return web.json_response({"data": []})
        body = await request.json()
        stamps.setdefault(request.path, []).append(time.perf_counter())
        await asyncio.sleep(0.1)  # each answer takes 0.1 s: tokenizing inside the clock would show
        if request.path == "/extras/tokenize":  # a BOS token for any input, then one per word
            return web.json_response({"tokens": [1] + [7] * len(body["input"].split())})
        stamps["answered"] = [time.perf_counter()]
        return event_stream(sse(*({"choices": [{"text": w, "index": 0}]} for w in ("one", " two", " three"))))

    spec = RequestSpec(Prompt("p", "x", "hello"), "measured", 1, 0)
    (rec,) = serve(handler, lambda base: run_batch(base, "completions", [spec], 1, lambda s: {"prompt": "x"}, 10,
                                                   lambda r: None, tokenize_path="/extras/tokenize"))
    assert seen == ["/v1/models", "/v1/completions", "/extras/tokenize", "/extras/tokenize"]
    assert rec.ok and (rec.completion_tokens, rec.completion_tokens_source) == (3, "retokenized")
    # The request's clock brackets the server's answer and stops before the tokenizer is asked.
    (received,), (answered,) = stamps["/v1/completions"], stamps["answered"]
    assert rec.t_start < received < answered < rec.t_end < min(stamps["/extras/tokenize"])
    # So e2e is 3 tokens over about the server's 0.1 s (~30 tok/s), not over its tokenizing too (~10).
    truth = 3 / (answered - received)
    assert 0.8 * truth < rec.e2e_tok_s < truth
