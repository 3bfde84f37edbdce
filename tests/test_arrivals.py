"""Open-loop arrivals (measure/arrivals.py): the schedule's inter-arrival times against the
distribution configured (Kolmogorov-Smirnov, scipy's), and the sender against a fake server
(tests/support/fake_server.py; a GPU server cannot run here): every request sent and recorded,
the cap on requests in flight held, and a request that waited for the cap recorded as late.
The lateness at 50 requests/s is a speed target: benchmarks/arrivals.py prints it."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from scipy import stats

from orchestrator.measure.arrivals import arrival_offsets, run_open_loop
from orchestrator.measure.driver import RequestSpec
from orchestrator.measure.prompts import Prompt

from .support.fake_server import FakeServer


def gaps(rate, n, burstiness=1.0, seed=7):
    return np.diff(arrival_offsets(rate, n, burstiness, seed))


def test_poisson_gaps_pass_a_ks_test_against_the_configured_rate():
    assert stats.kstest(gaps(50.0, 3000), stats.expon(scale=1 / 50).cdf).pvalue > 0.01


def test_the_ks_test_sees_a_schedule_drawn_at_another_rate():
    # the same test would fail a sender that drew at 40/s where 50/s was asked
    assert stats.kstest(gaps(40.0, 3000), stats.expon(scale=1 / 50).cdf).pvalue < 0.01


@pytest.mark.parametrize("burstiness", [0.5, 2.0])
def test_gamma_gaps_have_the_configured_shape_and_mean(burstiness):
    g = gaps(20.0, 3000, burstiness)
    assert stats.kstest(g, stats.gamma(a=burstiness, scale=1 / (20.0 * burstiness)).cdf).pvalue > 0.01
    assert stats.kstest(g, stats.expon(scale=1 / 20).cdf).pvalue < 0.01  # not Poisson: the shape is seen


def test_the_schedule_is_the_seeds_and_starts_at_zero():
    assert arrival_offsets(5.0, 10, 1.0, 3) == arrival_offsets(5.0, 10, 1.0, 3)
    assert arrival_offsets(5.0, 10, 1.0, 3) != arrival_offsets(5.0, 10, 1.0, 4)
    offsets = arrival_offsets(5.0, 10, 1.0, 3)
    assert offsets[0] == 0.0 and offsets == sorted(offsets) and len(offsets) == 10
    assert arrival_offsets(5.0, 0) == [] and arrival_offsets(5.0, 1) == [0.0]


@pytest.mark.parametrize("rate, burstiness", [(0, 1), (-1, 1), (1, 0), (float("nan"), 1)])
def test_a_rate_or_burstiness_not_above_zero_is_refused(rate, burstiness):
    with pytest.raises(ValueError, match="must be above 0"):
        arrival_offsets(rate, 5, burstiness)


class Counting(FakeServer):
    """The fake server, counting the requests it holds at once."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.lock, self.now, self.most = threading.Lock(), 0, 0
        handler = self.httpd.RequestHandlerClass
        outer = self

        class Held(handler):
            def do_POST(self):
                with outer.lock:
                    outer.now += 1
                    outer.most = max(outer.most, outer.now)
                try:
                    super().do_POST()
                finally:
                    with outer.lock:
                        outer.now -= 1

        self.httpd.RequestHandlerClass = Held


def send(server, n, offsets, cap):
    specs = [RequestSpec(Prompt("s", str(i), f"p{i}"), "measured", cap, 0) for i in range(n)]
    got = []
    records = asyncio.run(run_open_loop(server.url, "completions", specs, offsets, cap,
                                        lambda s: {"prompt": s.prompt.text, "stream": True}, 30, got.append))
    return specs, records, got


def test_every_request_is_sent_recorded_and_in_time_when_the_server_keeps_up():
    with Counting(total_tokens=4, tokens_per_chunk=4, gap_s=0.0) as server:
        offsets = [0.05 * i for i in range(10)]  # 20/s against a server that answers at once
        specs, records, got = send(server, 10, offsets, 4)
    assert len(records) == len(got) == 10 and all(r.ok for r in records)
    assert sorted(r.key for r in records) == sorted(s.key for s in specs)
    assert all(r.send_late_s is not None and r.send_late_s >= 0 for r in records)
    starts = [r.t_start for r in sorted(records, key=lambda r: int(r.prompt_id))]
    assert starts == sorted(starts)  # sent in the schedule's order


def test_the_cap_holds_and_a_request_that_waited_for_it_is_recorded_late():
    # Each request streams for about 0.3 s; all ten are due within 0.1 s; two streams at most.
    with Counting(total_tokens=6, tokens_per_chunk=1, gap_s=0.05) as server:
        offsets = [0.01 * i for i in range(10)]
        _specs, records, _ = send(server, 10, offsets, 2)
        most = server.most
    assert most == 2 and all(r.ok for r in records)
    late = {int(r.prompt_id): r.send_late_s for r in records}
    assert late[0] < 0.1 and late[1] < 0.1  # the first two found a free stream
    assert all(late[i] > 0.2 for i in range(2, 10))  # the rest waited a whole stream or more


def test_due_times_and_requests_must_match():
    with pytest.raises(ValueError, match="3 requests but 2 due times"):
        asyncio.run(run_open_loop("http://127.0.0.1:9", "chat",
                                  [RequestSpec(Prompt("s", str(i), "p"), "measured", 1, 0) for i in range(3)],
                                  [0.0, 0.1], 1, lambda s: {}, 1, lambda r: None))


def test_a_refusal_of_orchs_credentials_sends_nothing_more():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posts = []

    class Refusing(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _answer(self, code):
            body = b'{"error": "bad key"}'
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer(200)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(1)
            self._answer(401)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        specs = [RequestSpec(Prompt("s", str(i), "p"), "measured", 1, 0) for i in range(5)]
        records = asyncio.run(run_open_loop(f"http://127.0.0.1:{httpd.server_address[1]}", "chat", specs,
                                            [0.05 * i for i in range(5)], 1, lambda s: {"stream": True}, 10,
                                            lambda r: None))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(posts) == 1 and len(records) == 1  # one stream: the refusal ends before the next is due
    assert not records[0].ok and records[0].http_status == 401
