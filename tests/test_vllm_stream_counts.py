"""vLLM's per-request acceptance (metrics.speculative_decoding on the stream's last event), read and
checked as hostile input. The event is shaped as vllm 0.32's completion/serving.py writes it."""

from __future__ import annotations

import aiohttp
import pytest

from engines.vllm import Vllm
from orchestrator.measure.driver import stream_request

from .support.canned_server import answer, event_stream, serve, sse

COUNTS = Vllm.stream_counts


def spec(**over):
    d = {"mean_acceptance_length": 2.0, "draft_acceptance_rate": 0.25, "acceptance_histogram": [2, 1, 0, 1, 0],
         "num_spec_steps": 4, "num_accepted_draft_tokens": 4, "num_draft_tokens": 16, "num_spec_tokens": 4}
    d.update(over)
    return d


def run(last: dict) -> dict:
    body = sse({"choices": [{"index": 0, "text": "one two", "finish_reason": None}]},
               {"choices": [{"index": 0, "text": " three", "finish_reason": "length"}]},
               {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 8}, **last})

    async def client(base):
        async with aiohttp.ClientSession() as session:
            return await stream_request(session, base + "/v1/completions", {"stream": True}, 10, COUNTS)
    return serve(answer(lambda: event_stream(body)), client)


def test_the_last_event_gives_each_requests_drafts():
    rec = run({"metrics": {"speculative_decoding": spec()}})
    assert rec["ok"], rec["error"]
    assert (rec["spec_num_spec_steps"], rec["spec_num_draft_tokens"], rec["spec_num_accepted_draft_tokens"]) == (4, 16, 4)
    assert rec["spec_acceptance_histogram"] == [2, 1, 0, 1, 0]
    assert rec["completion_tokens"] == 8 and rec["completion_tokens_source"] == "usage"


def test_a_server_without_the_flag_records_none():
    rec = run({})
    assert rec["ok"] and "spec_num_spec_steps" not in rec


@pytest.mark.parametrize("metrics,error", [
    ({"speculative_decoding": spec(num_accepted_draft_tokens=17, acceptance_histogram=None)},
     "metrics.speculative_decoding.num_accepted_draft_tokens (17) is more than"),
    ({"speculative_decoding": spec(acceptance_histogram=[2, 1, 0, 2, 0])},
     "acceptance_histogram counts 5 steps, not metrics.speculative_decoding.num_spec_steps (4)"),
    ({"speculative_decoding": spec(acceptance_histogram=[1, 2, 0, 0, 1])},
     "acceptance_histogram accepts 6 tokens, not metrics.speculative_decoding.num_accepted_draft_tokens (4)"),
    ({"speculative_decoding": spec(acceptance_histogram=[2, 1, -1, 2])}, "outside 0.."),
    ({"speculative_decoding": spec(acceptance_histogram=[2, 1, None, 1])}, "acceptance_histogram holds a null"),
    ({"speculative_decoding": spec(acceptance_histogram="2,1,0,1")}, "acceptance_histogram is a string"),
    ({"speculative_decoding": spec(acceptance_histogram=[0] * 5000)}, "bins, more than"),
    ({"speculative_decoding": spec(num_spec_steps=2.5)}, "not a whole number"),
    ({"speculative_decoding": [1, 2]}, "metrics.speculative_decoding is"),
    ("text", "metrics is"),
])
def test_a_stream_whose_counts_disagree_is_an_error_row(metrics, error):
    rec = run({"metrics": metrics})
    assert not rec["ok"] and error in rec["error"], rec["error"]
    assert rec["e2e_tok_s"] is None


def test_per_request_counts_read_back_as_hostile_input():
    from orchestrator.results.readback import validate
    from orchestrator.types.records import RequestRecord

    base = {"key": "measured/c1/r0/s/p", "phase": "measured", "concurrency": 1, "repeat": 0, "prompt_set": "s",
            "prompt_id": "p", "ok": True, "cell_id": "v-ngram-n4", "engine": "v", "method": "ngram", "n_spec": 4,
            "e2e_tok_s": 10.0, "completion_tokens": 8, "spec_num_spec_steps": 4, "spec_num_draft_tokens": 16,
            "spec_num_accepted_draft_tokens": 4, "spec_acceptance_histogram": [2, 1, 0, 1, 0]}
    rec, problems, skipped = validate(RequestRecord, base)
    assert rec.ok and not problems and not skipped
    for bad, why in [({"spec_acceptance_histogram": [2, 1, 0, 2, 0]}, "counts 5 steps, not spec_num_spec_steps (4)"),
                     ({"spec_acceptance_histogram": [1, 2, 0, 0, 1]}, "does not add up to spec_num_accepted_draft_tokens"),
                     ({"spec_num_accepted_draft_tokens": 17, "spec_acceptance_histogram": None},
                      "more than spec_num_draft_tokens (16)"),
                     ({"spec_acceptance_histogram": [2, -1]}, "spec_acceptance_histogram.1 -1")]:
        rec, problems, skipped = validate(RequestRecord, {**base, **bad})
        assert not skipped and not rec.ok and rec.e2e_tok_s is None  # kept, counted as failed
        assert any(why in p for p in problems), problems
