"""Faults injected for real: a local fault server, real processes, real signals, real limits."""

import asyncio
import time

import pytest

from orchestrator.measure.driver import RequestSpec, run_batch
from orchestrator.measure.prompts import Prompt

from .support.fake_server import FakeServer


def one(server, timeout=30):
    spec = RequestSpec(Prompt("p", "id", "x"), "measured", 1, 0)
    t0 = time.monotonic()
    (rec,) = asyncio.run(run_batch(server.url, "chat", [spec], 1, lambda s: {"stream": True}, timeout, lambda r: None))
    return rec, time.monotonic() - t0


@pytest.mark.parametrize("fault, error", [
    ("http500", 'HTTP 500: {"error": "injected"}'),
    ("http429", 'HTTP 429: {"error": "injected"}'),
    ("http503", 'HTTP 503: {"error": "injected"}'),
    ("not_json", "HTTP 200 but not an event stream (text/html): '<html>502 Bad Gateway</html>'"),
    ("cut", "stream ended before [DONE] after 3 chunks (cut mid-stream)"),
    ("no_usage", "server reported no completion token count (no usage or timings)"),
])
def test_bad_responses_become_error_rows(fault, error):
    with FakeServer(fault=fault) as server:
        rec, _ = one(server)
    assert rec.ok is False and rec.error == error
    assert rec.e2e_tok_s is None and rec.key == "measured/c1/r0/p/id"


def test_a_stalled_stream_ends_at_its_deadline():
    """The stream stalls until the server is stopped, so the request can end only by its own
    deadline, while the server still holds it: no window of seconds to race."""
    with FakeServer(fault="stall") as server:
        rec, took = one(server, timeout=1.0)
        assert not server.released.is_set()  # ended by the client, the stream still open
    assert rec.ok is False
    assert rec.error == "deadline: the request was still running after request_timeout_s = 1 s (1 text chunks read)"
    assert took >= 1.0 - 1e-3  # a deadline never fires early (asyncio's clock is time.monotonic)
