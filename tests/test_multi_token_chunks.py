"""Several tokens per SSE chunk, from a real local server: counts and ITL follow the server."""

import asyncio

import pytest

from orchestrator.measure.driver import RequestSpec, run_batch
from orchestrator.analysis.metrics import itl_per_token
from orchestrator.measure.prompts import Prompt

from .support.fake_server import FakeServer


def drive(server, n=2):
    specs = [RequestSpec(Prompt("p", f"id{i}", "x"), "measured", 1, 0) for i in range(n)]
    return asyncio.run(run_batch(server.url, "chat", specs, 1, lambda s: {"stream": True}, 30, lambda r: None))


def test_completion_tokens_and_itl_follow_the_servers_counts_not_chunks():
    with FakeServer(total_tokens=24, tokens_per_chunk=4, gap_s=0.02) as server:
        records = drive(server)
    for rec in records:
        assert rec.chunks == 6 and rec.completion_tokens == 24
        itl = itl_per_token(rec.model_dump())  # as summary reads a frame row
        assert len(itl) == 20  # 24 tokens less the 4 of the first chunk, each its own ITL value
        # Each 4-token chunk arrived about 20 ms after the last: about 5 ms per token, not 20.
        assert sum(itl) / len(itl) == pytest.approx(0.005, rel=0.5)
        # TPOT and the tok/s rates of multi-token chunks are checked against a paced server's own
        # clock in test_known_rate (this server keeps no timestamps to check them against).


def test_without_per_chunk_counts_itl_is_unknown_but_tokens_are_still_exact():
    with FakeServer(total_tokens=24, tokens_per_chunk=8, continuous_usage=False) as server:
        (rec,) = drive(server, 1)
    assert rec.chunks == 3 and rec.completion_tokens == 24 and rec.completion_tokens_source == "usage"
    assert itl_per_token(rec.model_dump()) is None
