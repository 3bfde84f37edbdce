from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.common.errors import ScenarioError
from orchestrator.sweep.scenario_file import load_scenario
from orchestrator.types.scenario import cell_id, url_problem

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

NAME_RULE = ("use at most 64 letters, digits, '.', '_' and '-', starting with a letter or digit "
             "(it names result folders)")
FINITE = "must be a finite number, not inf or nan"

# Newer cases give the whole message after the key, and the test compares it exactly.
EXACT = {
    "prompt_table_unknown_key.toml": ("workload.prompts[0].per_categry", "unknown key; remove it or check its spelling"),
    "prompt_file_category_int.toml": ("workload.prompts[0]", f"{BAD}/../fixtures/prompt_sets/bad-category-int.parquet "
                                      'row 1: "category" must be a string (got 3); put it in quotes or leave "category" out'),
    "prompt_file_empty_split.toml": ("workload.prompts[0]", f"{BAD}/../fixtures/prompt_sets/bad-empty-split.parquet: "
                                     "speed-bench columns but no rows (an empty split); point at a split file that "
                                     "holds prompts"),
    "prompt_ids_unknown.toml": ("workload.prompts[0]", "prompt set {source = 'seeds', ids = ['hello', 'tcp-vs-udp']} has no prompt with id "
                                "'tcp-vs-udp'; its ids include average-speed, counterexample, fibonacci, fizzbuzz-ts, "
                                "hello, tamil-formal, tcp-udp-quic, ten-word-sentences"),
    "prompt_ids_twice.toml": ("workload.prompts[0].ids", "ids lists 'hello' twice"),
    "requantized_for_hf.toml": ("engines[0].model", "gemma-3-270m-q8_0 is a GGUF for llama.cpp; an engine that loads "
                                "Hugging Face folders can use 'gemma-3-270m'"),
    "duplicate_prompt_set.toml": ("workload.prompts", "duplicate prompt sets ['seeds']; list each once"),
    "prompt_set_name_clash.toml": ("workload.prompts", "'prompts/a/qa.jsonl' and 'prompts/b/qa.jsonl' are both "
                                   "prompt set 'qa' (a file's name is its set's name); rename one of the files, or give one a `name` in a table"),
    "inf_temperature.toml": ("workload.temperature", FINITE),
    "negative_inf_request_timeout.toml": ("workload.request_timeout_s", FINITE),
    "nan_ready_timeout.toml": ("engines[0].ready_timeout_s", FINITE),
    "long_scenario_name.toml": ("name", NAME_RULE),
    "method_escapes_folder.toml": ("engines[0].speculation.method", NAME_RULE),
    "method_with_slash.toml": ("engines[0].speculation.method", NAME_RULE),
    "cell_id_collision.toml": ("engines", "engines 'a-b' and 'a' both make cell 'a-b-x-n1', which names a result "
                               "folder; rename one of the engines"),
    "url_trailing_v1.toml": ("engines[0].url", "drop the trailing /v1: orch adds /v1/... itself"),
    "url_port_out_of_range.toml": ("engines[0].url", "port '99999' is not a number from 1 to 65535; "
                                   "use the port the server listens on"),
    "url_without_host.toml": ("engines[0].url", "the URL has no host; write it as http://HOST:PORT"),
    "telemetry_interval_zero.toml": ("telemetry.interval_s", "Input should be greater than or equal to 0.01"),
    "roofline_unknown_gpu.toml": ("engines[0].roofline.gpu", "'Voodoo 5' is not a GPU orch knows; use one of RTX PRO "
                                  "6000 Blackwell, H200, H100 PCIe, H100 NVL, H100 SXM, B200, A100 80GB SXM, A100 80GB "
                                  "PCIe, A100 40GB, L40S, L40, L4, A10G, A10, GeForce RTX 5090, GeForce RTX 4090, or set "
                                  "bandwidth_gb_s"),
    "roofline_negative_weights.toml": ("engines[0].roofline.weight_gb", "Input should be greater than 0"),
    "roofline_bandwidth_nan.toml": ("engines[0].roofline.bandwidth_gb_s", FINITE),
    "roofline_unknown_key.toml": ("engines[0].roofline.weights_gb", "unknown key; remove it or check its spelling"),
    # inputs sized to exhaust memory (tests/test_hostile_sizes.py; README, "Limits")
    "repeats_huge.toml": ("workload.repeats", "1,000,000,000,000 is more than the 100,000 requests one sweep may "
                          "plan; use at most 100,000 (README, Limits)"),
    "plan_too_large.toml": ("workload", "plans 128,004 requests (4 server starts x (1 warm-up + 8 prompts x 1000 "
                            "repeats x 4 concurrency levels)), more than the 100,000 of one sweep; sample fewer "
                            "prompts (per_category, ids), lower repeats or warmup, or list fewer concurrency levels, "
                            "n_spec depths or blocks"),
}
# [placement] (sweep/placement.py): devices of this host, or a Ray cluster
PLACEMENT = {
    'placement_cluster_address.toml': ('placement.cluster', '\'http://head:8265; rm -rf /\' is not a Ray address; write "auto", "HOST:6379" or "ray://HOST:10001"'),
    'placement_cluster_with_devices.toml': ('placement.cluster', 'on a Ray cluster each node declares its devices (docs/clusters.md); drop placement.gpus and placement.cores'),
    'placement_core_huge.toml': ('placement.cores', '\'0-99999999\' is not a core set; write "0", "0-3" or "0-3,8"'),
    'placement_core_set_text.toml': ('placement.cores', '\'../etc\' is not a core set; write "0", "0-3" or "0-3,8"'),
    'placement_cores_backwards.toml': ('placement.cores', "'3-1' is not a range of core ids from 0 to 4095; write LOW-HIGH"),
    'placement_cores_overlap.toml': ('placement.cores', 'core sets share cores [1]; give each device cores of its own'),
    'placement_gpu_ids_text.toml': ('placement.gpus', '\'GPU-5fe3\' is not a list of GPU ids; write "0" or "0,1"'),
    'placement_gpus_overlap.toml': ('placement.gpus', 'GPU sets share GPUs [1]; give each device GPUs of its own'),
    'placement_gpus_cores_mismatch.toml': ('placement.cores', '1 core sets for 2 GPU devices; give one core set per GPU device, or leave cores out'),
    'placement_resource_name.toml': ('placement.resource', 'a Ray resource name: letters, digits and \'_\', such as "orch_device"'),
    'placement_resource_without_cluster.toml': ('placement.resource', "a Ray resource goes with placement.cluster; set the cluster's address"),
}
EXACT.update(PLACEMENT)
CASES.update(EXACT)


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
    assert lines[0] == prefix + words if name in EXACT else words in lines[0]
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


ENDPOINT = """
name = "t"
[[engines]]
name = "{name}"
kind = "endpoint"
launcher = "external"
model = "served"
url = "{url}"
[engines.speculation]
method = "{method}"
n_spec = [0, 1]
"""


def _error(path: Path, overrides=()) -> str:
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, overrides)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("key", ["workload.temperature", "workload.request_timeout_s", "engines.a.ready_timeout_s"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "+nan"])
def test_every_float_key_refuses_inf_and_nan(tmp_path, key, value):
    path = _write(tmp_path, GOOD)
    shown = key.replace("engines.a.", "engines[0].")
    assert _error(path, [f"{key}={value}"]) == f"{path}: {shown}: {FINITE}"


def test_speculation_config_refuses_inf_and_nan_at_any_depth(tmp_path):
    path = _write(tmp_path, GOOD)
    for value in ("nan", "[1.0, inf]", "{ a = { b = -inf } }"):
        assert _error(path, [f"engines.a.speculation.config.x={value}"]) == (
            f"{path}: engines[0].speculation.config: every number must be finite, not inf or nan")


@pytest.mark.parametrize("method", ["..", ".", "a/b", "../x", "a\\\\b", "-x", "x y", "é", "m" * 65])
def test_endpoint_method_is_a_folder_safe_label(tmp_path, method):
    path = _write(tmp_path, ENDPOINT.format(name="e", url="http://h:1", method=method))
    assert _error(path) == f"{path}: engines[0].speculation.method: {NAME_RULE}"


@pytest.mark.parametrize("key", ["name", "engines.e.name"])
def test_names_are_at_most_64_characters(tmp_path, key):
    path = _write(tmp_path, ENDPOINT.format(name="e", url="http://h:1", method="none"))
    assert load_scenario(path, [f'{key}="{"n" * 64}"'])
    shown = key.replace("engines.e.", "engines[0].")
    assert _error(path, [f'{key}="{"n" * 65}"']) == f"{path}: {shown}: {NAME_RULE}"


def test_cell_id_is_the_runners_rule():
    assert cell_id("llama", "none", 0) == "llama-n0"
    assert cell_id("llama", "ngram-mod", 0) == "llama-n0"  # the baseline has no method
    assert cell_id("llama", "ngram-mod", 4) == "llama-ngram-mod-n4"


def test_cells_that_differ_only_in_case_collide(tmp_path):
    text = ENDPOINT.format(name="A", url="http://h:1", method="none") + (
        '[[engines]]\nname = "a"\nkind = "endpoint"\nlauncher = "external"\nmodel = "m"\nurl = "http://h:2"\n')
    path = _write(tmp_path, text)
    assert _error(path) == (f"{path}: engines: engines 'A' and 'a' both make cell 'A-n0' and 'a-n0' (same folder "
                            "ignoring case), which names a result folder; rename one of the engines")


def test_engines_with_distinct_cells_pass(tmp_path):
    text = ENDPOINT.format(name="a-b", url="http://h:1", method="x") + (
        '[[engines]]\nname = "a"\nkind = "endpoint"\nlauncher = "external"\nmodel = "m"\nurl = "http://h:2"\n'
        '[engines.speculation]\nmethod = "b-y"\nn_spec = [1]\n')
    assert len(load_scenario(_write(tmp_path, text)).engines) == 2


QUERY = "the URL has a query or fragment ('?...' or '#...'); remove it: orch appends paths to the base URL"
BAD_URLS = {
    "ftp://h:21": "not an http(s) URL; write it as http://HOST:PORT",
    "127.0.0.1:8080": "not an http(s) URL; write it as http://HOST:PORT",
    "localhost:8080": "not an http(s) URL; write it as http://HOST:PORT",
    "http://:8080": "the URL has no host; write it as http://HOST:PORT",
    "http:///v1": "the URL has no host; write it as http://HOST:PORT",
    "http://user:secret@:80": "the URL has no host; write it as http://HOST:PORT",
    "http://h:99999": "port '99999' is not a number from 1 to 65535; use the port the server listens on",
    "http://h:abc": "port 'abc' is not a number from 1 to 65535; use the port the server listens on",
    "http://h:0": "port '0' is not a number from 1 to 65535; use the port the server listens on",
    "http://h:-1": "port '-1' is not a number from 1 to 65535; use the port the server listens on",
    "http://[::1]:x": "port 'x' is not a number from 1 to 65535; use the port the server listens on",
    "http://[::1": "not a valid URL (Invalid IPv6 URL); write it as http://HOST:PORT",
    "http://h:8000/v1": "drop the trailing /v1: orch adds /v1/... itself",
    "http://h:8000/v1/": "drop the trailing /v1: orch adds /v1/... itself",
    "http://h/proxy/v1//": "drop the trailing /v1: orch adds /v1/... itself",
    "http://h/v1/chat/completions": "drop the trailing /v1/chat/completions: orch adds /v1/... itself",
    "http://h /x": "the URL contains whitespace or control characters; remove them",
    " http://h": "the URL contains whitespace or control characters; remove them",
    "http://h\n": "the URL contains whitespace or control characters; remove them",
    "http://h\x00": "the URL contains whitespace or control characters; remove them",
    "http://h/?a=1": QUERY,
    "http://h/?": QUERY,
    "http://h#top": QUERY,
}


@pytest.mark.parametrize("url", sorted(BAD_URLS))
def test_url_problem_names_the_fix(url):
    assert url_problem(url) == BAD_URLS[url]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "https://h", "http://user:pass@host:8000",
                                 "http://h/proxy", "http://h/proxy/", "http://[::1]:8000", "http://h/v1/x",
                                 "http://h/apiv1", "HTTP://h:1"])
def test_url_problem_accepts(url):
    assert url_problem(url) is None


def test_url_error_does_not_repeat_the_password(tmp_path):
    path = _write(tmp_path, ENDPOINT.format(name="e", url="http://user:hunter2@h:99999", method="none"))
    message = _error(path)
    assert message == f"{path}: engines[0].url: {BAD_URLS['http://h:99999']}"
    assert "hunter2" not in message


def test_prompt_set_file_named_like_a_builtin_set_clashes(tmp_path):
    (tmp_path / "seeds.jsonl").write_text('{"prompt": "p"}\n')
    path = _write(tmp_path, GOOD.replace("max_tokens = 64", 'prompts = ["seeds", "seeds.jsonl"]'))
    assert _error(path) == (f"{path}: workload.prompts: 'seeds' and 'seeds.jsonl' are both prompt set 'seeds' "
                            "(a file's name is its set's name); rename one of the files, or give one a `name` in a table")


def test_deeply_nested_toml_is_one_line(tmp_path):
    path = _write(tmp_path, "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert _error(path) == f"{path}: not valid TOML (arrays or tables nested too deeply); fix the syntax"


def test_unreadable_scenario_is_one_line(tmp_path, monkeypatch):
    path = _write(tmp_path, GOOD)

    def denied(self, *a, **k):  # tests run as root, where chmod 000 does not stop a read
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    assert _error(path) == f"{path}: cannot read it (Permission denied); check its permissions"
    monkeypatch.setattr(Path, "is_file", denied)  # stat, under a folder that cannot be searched
    assert _error(path) == f"{path}: cannot read it (Permission denied); check its permissions"
