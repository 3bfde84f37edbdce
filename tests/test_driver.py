import asyncio
import gc
import socket

import aiohttp
import pytest
from aiohttp import web

from orchestrator.measure.driver import RequestSpec, rates, run_batch, stream_request
from orchestrator.measure.prompts import Prompt
from engines.llama_server import LlamaServer  # llama.cpp's timings: the stream counts these tests feed

from .support.canned_server import answer, event_stream, serve, sse

TIMINGS = LlamaServer.stream_counts


def stream(body: bytes):
    return answer(lambda: event_stream(body))


def chunk(text):
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def run(handler, body=None, url: str | None = None) -> dict:
    async def client(base):
        async with aiohttp.ClientSession() as session:
            return await stream_request(session, (url or base) + "/v1/chat/completions", body or {"stream": True}, 10, TIMINGS)
    return serve(handler, client)


def test_tokens_come_from_usage_not_chunks():
    # 3 chunks carrying 12 tokens in all, as a speculative engine sends them.
    body = sse(chunk("one two three four"), chunk(" five six seven eight"), chunk(" nine ten eleven twelve"),
               {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 12},
                "timings": {"predicted_n": 12, "draft_n": 10, "draft_n_accepted": 9}})
    rec = run(stream(body))
    assert rec["ok"] and rec["error"] is None
    assert (rec["completion_tokens"], rec["completion_tokens_source"], rec["chunks"]) == (12, "usage", 3)
    assert (rec["prompt_tokens"], rec["timings_draft_n"], rec["timings_draft_n_accepted"]) == (7, 10, 9)
    assert rec["text"] == "one two three four five six seven eight nine ten eleven twelve"
    # The rates those 12 tokens give are checked against a paced server's own clock in test_known_rate.


def test_timings_predicted_n_is_the_fallback():
    body = sse(chunk("a"), chunk("b"), {"choices": [], "timings": {"predicted_n": 5}})
    rec = run(stream(body))
    assert (rec["completion_tokens"], rec["completion_tokens_source"]) == (5, "timings.predicted_n")


def test_no_server_count_is_an_error_row_not_a_chunk_count():
    rec = run(stream(sse(chunk("a"), chunk("b"))))
    assert not rec["ok"] and rec["completion_tokens"] is None
    assert "no completion token count" in rec["error"] and rec["e2e_tok_s"] is None


def test_completions_text_field_is_read():
    body = sse({"choices": [{"text": "xyz", "index": 0}]}, {"choices": [], "usage": {"completion_tokens": 2}})
    rec = run(stream(body))
    assert rec["text"] == "xyz" and rec["completion_tokens"] == 2


@pytest.mark.parametrize("status", [500, 429, 503])
def test_http_errors_become_rows(status):
    rec = run(answer(lambda: web.Response(status=status, text="overloaded")))
    assert not rec["ok"] and rec["error"] == f"HTTP {status}: overloaded"


def test_malformed_sse_and_server_error_objects():
    rec = run(stream(b"data: {not json\n\n"))
    assert not rec["ok"] and rec["error"].startswith("malformed SSE data")
    rec = run(stream(sse({"error": {"message": "ctx full"}})))
    assert not rec["ok"] and "ctx full" in rec["error"]


def test_connection_failure_is_a_row():
    with socket.socket() as sock:  # a port that was just free, so nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rec = run(stream(b""), url=f"http://127.0.0.1:{port}")
    assert not rec["ok"] and rec["e2e_tok_s"] is None
    assert rec["error"].startswith(f"ClientConnectorError: Cannot connect to host 127.0.0.1:{port}")


def test_request_body_is_sent_as_given():
    seen = {}

    async def handler(request):
        seen.update(await request.json())
        return event_stream(sse({"choices": [], "usage": {"completion_tokens": 1}}))
    run(handler, {"stream": True, "cache_prompt": False, "seed": 1234})
    assert seen == {"stream": True, "cache_prompt": False, "seed": 1234}


def test_events_split_across_reads_are_joined():
    # A server's writes need not end on a line: an event cut mid-JSON, and a last line with no newline.
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        whole = sse(chunk("alpha"), chunk(" beta"), {"choices": [], "usage": {"completion_tokens": 2}}, done=False)
        for part in (whole[:20], whole[20:70], whole[70:]):
            await resp.write(part)
            await asyncio.sleep(0.02)
        await resp.write(b"data: [DONE]")
        return resp
    rec = run(handler)
    assert rec["ok"] and rec["text"] == "alpha beta" and rec["chunks"] == 2 and rec["completion_tokens"] == 2
    assert len(rec["chunk_t"]) == 2 and 0 < rec["chunk_t"][0] < rec["chunk_t"][1]


def test_rates_definitions():
    # 101 tokens in 2.5 s from the request's start; 100 after the first in the last 2.0 s.
    r = rates(101, t_start=10.0, t_first=10.5, t_end=12.5)
    assert r == pytest.approx({"e2e_tok_s": 40.4, "decode_tok_s": 50.0, "ttft_s": 0.5}, rel=1e-12)
    assert rates(1, 0.0, 0.2, 0.2)["decode_tok_s"] is None


def test_batch_opens_every_connection_first_then_keeps_order_and_concurrency():
    events, inflight, peak, gc_on = [], 0, 0, []

    async def handler(request):
        nonlocal inflight, peak
        gc_on.append(gc.isenabled())
        if request.method == "GET":
            events.append("GET")
            return web.json_response({"data": []})
        events.append((await request.json())["prompt"])
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.01)
        inflight -= 1
        return event_stream(sse({"choices": [{"text": "a", "index": 0}]}, {"choices": [], "usage": {"completion_tokens": 1}}))

    specs = [RequestSpec(Prompt("s", str(i), f"p{i}"), "measured", 3, 0) for i in range(8)]
    recs = serve(handler, lambda base: run_batch(base, "completions", specs, 3, lambda s: {"prompt": s.prompt.text},
                                                 10, lambda r: None))
    assert events[:3] == ["GET"] * 3 and "GET" not in events[3:]  # 3 streams, each connected before any clock
    assert events[3:] == [f"p{i}" for i in range(8)]  # sent in order
    assert peak == 3 and len(recs) == 8 and all(r.ok for r in recs)
    assert gc_on == [False] * 11 and gc.isenabled()  # no collector pauses while timed; back on after


def test_a_compressed_stream_is_read():
    # A proxy in front of an endpoint may gzip the event stream; through run_batch, so with orch's own session.
    async def handler(request):
        if request.method == "GET":
            return web.json_response({"data": []})
        resp = event_stream(sse(chunk("zipped"), {"choices": [], "usage": {"completion_tokens": 1}}))
        resp.enable_compression(web.ContentCoding.gzip)
        return resp
    spec = RequestSpec(Prompt("s", "0", "p"), "measured", 1, 0)
    (rec,) = serve(handler, lambda base: run_batch(base, "chat", [spec], 1, lambda s: {"stream": True}, 10,
                                                   lambda r: None))
    assert rec.ok and rec.text == "zipped" and rec.completion_tokens == 1


def test_the_http_session_is_injectable():
    """run_batch's open_session hands the driver another session: here one that adds a header
    the server sees, built on the driver's own (so the clock and connection rules still hold)."""
    from orchestrator.measure.driver import session_for

    seen = []

    async def handler(request):
        seen.append(request.headers.get("X-Injected"))
        if request.method == "GET":
            return web.json_response({"data": []})
        return event_stream(sse(chunk("hi"), {"choices": [], "usage": {"completion_tokens": 1}}))

    def injected(timeout, tls, headers):
        return session_for(timeout, tls, {**(headers or {}), "X-Injected": "yes"})

    spec = RequestSpec(Prompt("s", "0", "p"), "measured", 1, 0)
    (rec,) = serve(handler, lambda base: run_batch(base, "chat", [spec], 1, lambda s: {"stream": True}, 10,
                                                   lambda r: None, open_session=injected))
    assert rec.ok and rec.text == "hi" and seen == ["yes", "yes"]  # the connection's GET, then the request


def _hang_up_first(times: int):
    """Fault injection: the first `times` requests find their connection closed under them, before any answer."""
    posts = []

    async def handler(request):
        if request.method == "GET":
            return web.json_response({"data": []})
        posts.append(request.path)
        if len(posts) <= times:
            request.transport.close()  # the server hangs up: no status line ever goes out
            return web.Response()
        return event_stream(sse(chunk("ok"), {"choices": [], "usage": {"completion_tokens": 1}}))
    return handler, posts


def test_a_connection_closed_before_any_answer_is_sent_once_more_and_said():
    handler, posts = _hang_up_first(1)
    (rec,) = serve(handler, lambda base: run_batch(base, "chat", [RequestSpec(Prompt("s", "0", "p"), "measured", 1, 0)],
                                                   1, lambda s: {"stream": True}, 10, lambda r: None))
    assert len(posts) == 2 and rec.ok and rec.text == "ok" and rec.reconnected is True
    assert rec.model_dump(exclude_unset=True)["reconnected"] is True  # written to requests.jsonl


def test_a_server_that_always_hangs_up_is_an_error_row_after_one_more_try():
    handler, posts = _hang_up_first(99)
    (rec,) = serve(handler, lambda base: run_batch(base, "chat", [RequestSpec(Prompt("s", "0", "p"), "measured", 1, 0)],
                                                   1, lambda s: {"stream": True}, 10, lambda r: None))
    assert len(posts) == 2 and not rec.ok and rec.reconnected is True
    assert rec.error.startswith("ServerDisconnectedError") and rec.http_status is None


def test_a_refused_connection_is_not_tried_again():
    rec = run(_hang_up_first(0)[0], url="http://127.0.0.1:9")  # nothing listens on port 9
    assert not rec["ok"] and "reconnected" not in rec and rec["error"].startswith("ClientConnectorError")


def test_a_record_the_checks_refuse_at_write_time_is_a_failed_row_that_says_as_measured():
    from orchestrator.measure.driver import typed

    rec = typed({"key": "k", "phase": "measured", "concurrency": 1, "repeat": 0, "prompt_set": "s",
                  "prompt_id": "p", "ok": True, "error": None, "e2e_tok_s": -1.0})
    assert rec.ok is False and rec.e2e_tok_s is None
    assert rec.error == "invalid record as measured: e2e_tok_s -1.0: input should be greater than or equal to 0"
