"""SGLang: its command line checked against SGLang's own server-argument definitions
(tests/fixtures/sglang/server_flags.json, extracted by its extract_flags.py from the sglang
0.5.23 wheel's sglang/srt/arg_groups/fields/*.py), its depth mapping, and its /metrics counters.
No SGLang server runs here (no GPU): the scenario is checked in --dry-run only."""

import json
import re
from pathlib import Path

import pytest

from engines import ENGINES
from orchestrator.measure import server_metrics
from engines.plan import ResolvedModel
from orchestrator.types.scenario import EngineSpec

from .support.dry_runs import cells, docker_opts, flags, split

SGLANG = json.loads((Path(__file__).parent / "fixtures" / "sglang" / "server_flags.json").read_text())
LIVE = set(SGLANG["flags"])
MODEL = ResolvedModel("m", hf_ref="org/target")
DRAFT = ResolvedModel("d", hf_ref="org/draft")


def argv(method: str, n: int, config=None, draft=DRAFT) -> list[str]:
    spec = EngineSpec(name="s", kind="sglang", model="org/target", launcher="docker",
                      docker={"image": "lmsysorg/sglang:v0.5.23"},
                      speculation={"method": method, "n_spec": [0, n], "draft_model": "org/draft",
                                   "config": config or {}})
    return ENGINES["sglang"](spec).plan(n, MODEL, 40000, 1, draft).container.argv


def test_the_fixture_is_sglangs_own_list():
    assert SGLANG["sglang"] == "0.5.23" and len(LIVE) > 400
    assert {"--model-path", "--speculative-algorithm", "--enable-metrics"} <= LIVE


@pytest.mark.parametrize("method", ENGINES["sglang"].methods)
def test_every_flag_orch_emits_is_one_sglang_declares(method):
    a = argv(method, 4)
    assert a[:3] == ("python3", "-m", "sglang.launch_server")
    used = {t for t in a if t.startswith("--")}
    assert used <= LIVE, sorted(used - LIVE)
    assert method.upper() in SGLANG["speculative_algorithms"]


def test_a_chain_of_n_spec_drafts_for_the_eagle_family():
    f = flags(list(argv("eagle3", 5)))
    assert f["--speculative-algorithm"] == ["EAGLE3"] and f["--speculative-draft-model-path"] == ["org/draft"]
    # topk 1: SGLang itself rewrites num_draft_tokens to num_steps + 1
    assert (f["--speculative-num-steps"], f["--speculative-eagle-topk"], f["--speculative-num-draft-tokens"]) == \
        (["5"], ["1"], ["6"])


def test_a_tree_from_the_scenarios_config():
    f = flags(list(argv("eagle", 3, {"speculative_eagle_topk": 4, "speculative_num_draft_tokens": 8})))
    assert (f["--speculative-num-steps"], f["--speculative-eagle-topk"], f["--speculative-num-draft-tokens"]) == \
        (["3"], ["4"], ["8"])


def test_ngram_drafts_n_spec_tokens():
    f = flags(list(argv("ngram", 12, draft=None)))
    assert f["--speculative-num-draft-tokens"] == ["12"] and "--speculative-num-steps" not in f


def test_the_gemma4_scenario_flag_by_flag():
    found = cells("gemma4-31b-mtp-sglang.toml")
    assert sorted(int(c.rsplit("-n", 1)[1]) for c in found) == [0, 2, 3, 4, 5]
    for cell, cmd in found.items():
        opts, rest = split(cmd, "lmsysorg/sglang:latest")
        assert docker_opts(opts)["volume"].endswith(":/root/.cache/huggingface")
        assert rest[:3] == ["python3", "-m", "sglang.launch_server"]
        f = flags(rest)
        assert {t for t in rest if t.startswith("--")} <= LIVE
        assert f["--model-path"] == ["RedHatAI/gemma-4-31B-it-FP8-block"] and f["--port"] == ["30000"]
        assert f["--host"] == ["0.0.0.0"] and f["--enable-metrics"] == [""] and f["--disable-radix-cache"] == [""]
        assert f["--context-length"] == ["3000"] and f["--mem-fraction-static"] == ["0.45"]
        n = int(cell.rsplit("-n", 1)[1])
        if n == 0:
            assert not any(t.startswith("--speculative") for t in rest)
        else:
            assert f["--speculative-algorithm"] == ["NEXTN"]
            assert f["--speculative-draft-model-path"] == ["google/gemma-4-31B-it-assistant"]
            assert f["--speculative-num-steps"] == [str(n)] and f["--speculative-num-draft-tokens"] == [str(n + 1)]


# SGLang's /metrics as its metrics_collector declares them (sglang 0.5.23): counters with labels.
SGLANG_METRICS = """# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="m",engine_type="unified",tp_rank="0",pp_rank="0",moe_ep_rank="0"} %d
# HELP sglang:spec_verify_calls_total Total number of speculative verify calls.
# TYPE sglang:spec_verify_calls_total counter
sglang:spec_verify_calls_total{model_name="m",engine_type="unified",tp_rank="0",pp_rank="0",moe_ep_rank="0"} %d
# HELP sglang:spec_accept_rate The average acceptance rate of speculative decoding
# TYPE sglang:spec_accept_rate gauge
sglang:spec_accept_rate{model_name="m",engine_type="unified",tp_rank="0",pp_rank="0",moe_ep_rank="0"} 0.9
"""


def test_mean_acceptance_length_from_sglangs_counters():
    engine = ENGINES["sglang"]
    read = lambda gen, calls: server_metrics.parse(SGLANG_METRICS % (gen, calls), engine.metrics_prefix,
                                                   engine.metric_counters)
    # 1000 tokens more over 250 verify steps: 4 tokens a step, 3 of them accepted drafts
    d = server_metrics.delta(read(5000, 2000), read(6000, 2250))
    assert d["mean_acceptance_length"] == pytest.approx(4.0)
    assert d["acceptance_rate"] is None and d["draft_tokens"] is None  # proposals are not counted
    assert re.search("gauge", SGLANG_METRICS) and read(1, 1)["accepted_tokens"] == 0.0  # gauges ignored


def test_vllm_counters_are_unchanged_by_the_engine_mapping():
    text = "vllm:spec_decode_num_drafts_total 10\nvllm:spec_decode_num_draft_tokens_total 40\n" \
           "vllm:spec_decode_num_accepted_tokens_total 30\n"
    assert server_metrics.parse(text, "vllm:")["accepted_tokens"] == 30.0


def test_counters_that_contradict_each_other_give_no_window():
    engine = ENGINES["sglang"]
    read = lambda gen, calls: server_metrics.parse(SGLANG_METRICS % (gen, calls), engine.metrics_prefix,
                                                   engine.metric_counters)
    # 100 more verify steps than tokens out: no step yields fewer than its own token
    assert server_metrics.delta(read(5000, 2000), read(5100, 2200)) is None
    assert server_metrics.delta(read(5000, 2000), read(4000, 2100)) is None  # a restart: counters went back
    with pytest.raises(ValueError):
        server_metrics.parse(SGLANG_METRICS % (5000, 2000) + 'sglang:spec_verify_calls_total{tp_rank="1"} NaN\n',
                             engine.metrics_prefix, engine.metric_counters)


def test_the_window_is_the_difference_of_the_counters_whatever_their_totals():
    # Totals can come from before a restart of the scheduler's counting; only the window's deltas count.
    engine = ENGINES["sglang"]
    read = lambda gen, calls: server_metrics.parse(SGLANG_METRICS % (gen, calls), engine.metrics_prefix,
                                                   engine.metric_counters)
    d = server_metrics.delta(read(100, 200), read(300, 250))  # 200 tokens over 50 steps
    assert d["mean_acceptance_length"] == pytest.approx(4.0)
