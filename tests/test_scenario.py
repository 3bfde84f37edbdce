from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.errors import ScenarioError
from orchestrator.scenario import load_scenario

BAD = Path(__file__).parent / "bad_scenarios"

# file -> (key named in the error, words the fix or reason must contain)
CASES = {
    "syntax_error.toml": ("", "not valid TOML"),
    "unknown_top_key.toml": ("colour", "unknown key; remove it"),
    "unknown_engine_key.toml": ("engines[0].threads", "unknown key; remove it"),
    "wrong_type_max_tokens.toml": ("workload.max_tokens", "valid integer (got str 'many')"),
    "empty_n_spec.toml": ("engines[0].speculation.n_spec", "must not be empty"),
    "unknown_kind.toml": ("engines[0].kind", "unknown engine kind 'tensorrt'; known kinds: llama-server"),
    "unknown_launcher.toml": ("engines[0].launcher", "unknown launcher 'kubernetes'"),
    "missing_model.toml": ("engines[0].model", "required key is missing; add it"),
    "model_file_absent.toml": ("engines[0].model", "no-such-model.gguf does not exist"),
    "negative_n_spec.toml": ("engines[0].speculation.n_spec", "must be 0 (speculation off) or more"),
    "duplicate_n_spec.toml": ("engines[0].speculation.n_spec", "duplicate n_spec values [4]"),
    "unknown_method.toml": ("engines[0].speculation.method", "no speculation method 'eagle'"),
    "draft_without_model.toml": ("engines[0].speculation.draft_model", "needs a draft_model"),
    "no_engines.toml": ("engines", "must not be empty"),
    "unknown_prompt_set.toml": ("workload.prompts[0]", "unknown prompt set 'poems'"),
    "zero_concurrency.toml": ("workload.concurrency", "at least 1"),
    "url_with_process_launcher.toml": ("engines[0].url", 'url is only for launcher = "external"'),
    "external_without_url.toml": ("engines[0].url", 'launcher "external" needs url'),
}


def test_every_bad_file_has_a_case():
    assert sorted(p.name for p in BAD.glob("*.toml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_bad_scenario_is_one_line_exit_2_nothing_started(name, command, no_processes, tmp_path):
    key, words = CASES[name]
    args = [command, str(BAD / name)] + (["--out", str(tmp_path)] if command == "sweep" else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    prefix = f"Error: {BAD / name}: " + (f"{key}: " if key else "")
    assert lines[0].startswith(prefix), lines[0]
    assert words in lines[0]
    assert list(tmp_path.iterdir()) == []  # no run folder either


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


GOOD = """
name = "t"
[workload]
max_tokens = 64
[[engines]]
name = "a"
kind = "llama-server"
model = "gemma-3-270m"
[engines.speculation]
method = "ngram-mod"
n_spec = [0, 4]
"""


def test_set_overrides_any_key(tmp_path):
    sc = load_scenario(_write(tmp_path, GOOD), ["workload.max_tokens=32", "engines.a.speculation.n_spec=[0, 2, 8]",
                                                "engines.0.api=completions", "workload.concurrency=[1,2]"])
    assert sc.workload.max_tokens == 32
    assert sc.engines[0].speculation.n_spec == [0, 2, 8]
    assert sc.engines[0].api == "completions"
    assert sc.workload.concurrency == [1, 2]


def test_set_is_validated_like_the_file(tmp_path):
    path = _write(tmp_path, GOOD)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, ["workload.max_tokenz=32"])
    assert str(err.value) == f"{path}: workload.max_tokenz: unknown key; remove it or check its spelling"
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, ["workload.max_tokens"])
    assert "is not KEY=VALUE" in str(err.value)


def test_defaults(tmp_path):
    sc = load_scenario(_write(tmp_path, GOOD))
    assert (sc.workload.temperature, sc.workload.cache_prompt, sc.workload.concurrency) == (0.0, False, [1])
    assert sc.engines[0].launcher == "process" and sc.engines[0].api == "chat"


def test_shipped_scenarios_validate():
    root = Path(__file__).parent.parent / "scenarios"
    for path in root.glob("*.toml"):
        assert load_scenario(path).engines
