"""Anything inside a stream ends as a correct row or an error row saying what was wrong.

Bytes on the wire are exact (a real local aiohttp server); the truth is what the server sent."""

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web

from orchestrator.measure.driver import stream_request
from engines.llama_server import LlamaServer  # llama.cpp's timings: the stream counts these tests feed

from .support.canned_server import answer, event_stream, serve

TIMINGS = LlamaServer.stream_counts

USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def text(t, finish=None):
    return {"choices": [{"index": 0, "text": t, "finish_reason": finish}]}


def run(body: bytes, max_tokens: int = 16, timeout: float = 10) -> dict:
    async def client(base):
        async with aiohttp.ClientSession() as session:
            return await stream_request(session, base + "/v1/completions", {"max_tokens": max_tokens}, timeout, TIMINGS)
    return serve(answer(lambda: event_stream(body)), client)


def events(*objs, sep=b"\n\n", done=True) -> bytes:
    out = b"".join(b"data: " + json.dumps(o).encode() + sep for o in objs)
    return out + (b"data: [DONE]" + sep if done else b"")


VALID = events(text("a"), text("b", "length"), USAGE)


@pytest.mark.parametrize("name, body", [
    ("CRLF line ends", VALID.replace(b"\n", b"\r\n")),
    ("CR-only line ends", VALID.replace(b"\n", b"\r")),
    ("data over two lines", VALID.replace(b'data: {"choices": [{"index": 0, "text": "a"',
                                          b'data: {"choices":\ndata: [{"index": 0, "text": "a"')),
    ("event, id and retry lines", VALID.replace(b"data: ", b"event: message\nid: 7\nretry: 1000\ndata: ")),
    ("comments", b": hello\n\n" + VALID.replace(b"\n\n", b"\n: ping\n\n")),
    ("no space after data:", VALID.replace(b"data: ", b"data:")),
    ("a byte-order mark first", b"\xef\xbb\xbf" + VALID),
    ("no blank lines between events", VALID.replace(b"\n\n", b"\n")),
    ("[DONE] then close with no blank line", VALID[:-1]),
    ("null usage and empty choices", events({"choices": [], "usage": None}, text("a"), text("b", "length"), USAGE)),
])
def test_legal_sse_variants_give_correct_rows(name, body):
    rec = run(body)
    assert rec["ok"], (name, rec["error"])
    assert (rec["text"], rec["completion_tokens"], rec["chunks"]) == ("ab", 2, 2)


@pytest.mark.parametrize("event, error", [
    (None, "an SSE event's data is null (null), not a JSON object"),
    (42, "an SSE event's data is a number (42), not a JSON object"),
    ([], "an SSE event's data is a list ([]), not a JSON object"),
    ({"choices": 3}, "choices is a number (3), not a list"),
    ({"choices": [7]}, "a choice is a number (7), not an object"),
    ({"choices": [{"text": {"a": 1}}]}, 'choices[].text is an object ({"a": 1}), not a string'),
    ({"choices": [{"delta": {"content": 5}}]}, "delta.content is a number (5), not a string"),
    ({"choices": [{"text": "a", "finish_reason": 1}]}, "choices[].finish_reason is a number (1), not a string"),
    ({"choices": [], "usage": []}, "usage is a list ([]), not an object"),
    ({"choices": [], "usage": {"completion_tokens": -5}}, "usage.completion_tokens is -5: outside 0..max_tokens = 16"),
    ({"choices": [], "usage": {"completion_tokens": 3.5}}, "usage.completion_tokens is 3.5, not a whole number of tokens"),
    ({"choices": [], "usage": {"completion_tokens": 1e30}}, "usage.completion_tokens is 1e+30: outside 0..max_tokens = 16"),
    ({"choices": [], "usage": {"completion_tokens": "12"}}, 'usage.completion_tokens is a string ("12"), not a number'),
    ({"choices": [], "usage": {"completion_tokens": True}}, "usage.completion_tokens is a boolean (true), not a number"),
    ({"choices": [], "usage": {"prompt_tokens": 10**12}}, "usage.prompt_tokens is 1000000000000: outside 0..1,000,000,000"),
    ({"choices": [], "usage": {"prompt_tokens": 10**400}}, "usage.prompt_tokens is 100000... (401 digits): outside 0..1,000,000,000"),
    ({"choices": [], "timings": {"draft_n": 3, "draft_n_accepted": 4}},
     "timings.draft_n_accepted (4) is more than timings.draft_n (3)"),
    ({"choices": [], "timings": {"predicted_per_second": -1}}, "timings.predicted_per_second is -1: a rate is a finite number from 0"),
])
def test_unexpected_shapes_and_values_are_error_rows(event, error):
    rec = run(events(text("a"), event, USAGE))
    assert not rec["ok"] and rec["error"] == error and rec["e2e_tok_s"] is None


def test_a_number_too_large_for_a_float_is_an_error_row_not_infinity():
    rec = run(b'data: {"choices": [], "timings": {"predicted_per_second": 1e999}}\n\n' + VALID)
    assert rec["error"] == "timings.predicted_per_second is inf: a rate is a finite number from 0"
    rec = run(b'data: {"choices": [], "usage": {"completion_tokens": 1e999}}\n\n' + VALID)
    assert rec["error"] == "usage.completion_tokens is inf, not a whole number of tokens"


def test_an_empty_data_event_and_an_upper_case_content_type_are_legal():
    rec = serve(answer(lambda: web.Response(body=b"data:\n\n" + VALID, headers={"Content-Type": "Text/Event-Stream"})),
                lambda base: _one(base))
    assert rec["ok"] and rec["completion_tokens"] == 2


async def _one(base):
    async with aiohttp.ClientSession() as session:
        return await stream_request(session, base + "/v1/completions", {"max_tokens": 16}, 10, TIMINGS)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(constant):
    rec = run(b'data: {"choices": [], "usage": {"completion_tokens": ' + constant + b"}}\n\n")
    assert not rec["ok"] and rec["error"].startswith("malformed SSE data: ")


def test_invalid_utf8_is_an_error_row():
    rec = run(b'data: {"choices": [{"text": "\xff\xfe"}]}\n\n' + VALID)
    assert not rec["ok"] and rec["error"].startswith("SSE data is not UTF-8")


def test_a_stream_kept_alive_by_comments_ends_at_its_deadline():
    async def pings(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(events(text("a"), done=False))
        # Pings until the client leaves, so only its deadline can end the request; 120 s at most (a
        # guard against a client that never leaves: the stream then ends short of [DONE], which is
        # not the deadline's error).
        for _ in range(600):
            await resp.write(b": ping\n\n")
            await asyncio.sleep(0.2)
        return resp

    async def client(base):
        async with aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            rec = await stream_request(session, base + "/v1/completions", {"max_tokens": 4}, 1.5, TIMINGS)
            return rec, time.monotonic() - t0
    rec, took = serve(pings, client)
    assert rec["error"] == "deadline: the request was still running after request_timeout_s = 1.5 s (1 text chunks read)"
    assert took >= 1.5 - 1e-3  # a deadline never fires early (asyncio's clock is time.monotonic)


def test_a_stream_that_ignores_max_tokens_ends_at_its_deadline_or_its_count():
    async def endless(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n in range(1, 2000):  # 20 s at most
            await resp.write(events({**text("x"), "usage": {"completion_tokens": n}}, done=False))
            await asyncio.sleep(0.01)
        return resp

    async def client(base):
        async with aiohttp.ClientSession() as session:
            return await stream_request(session, base + "/v1/completions", {"max_tokens": 8}, 5, TIMINGS)
    rec = serve(endless, client)
    assert rec["error"] == "usage.completion_tokens is 9: outside 0..max_tokens = 8"


def test_what_one_response_may_buffer_is_bounded():
    rec = run(b"data: " + b"x" * (2 << 20))
    assert rec["error"] == "an SSE line passed 1024 KiB without a line end"
    rec = run(b"data: " + b"x" * (600 << 10) + b"\ndata: " + b"y" * (600 << 10) + b"\n\n")
    assert rec["error"] == "one SSE event passed 1024 KiB"


def test_a_rate_too_large_for_a_float_is_the_streams_error_not_a_failed_write():
    rec = run(events(text("a"), {"choices": [], "timings": {"prompt_per_second": 10**400}}, USAGE))
    assert not rec["ok"] and rec["error"].startswith("timings.prompt_per_second is 100000... (401 digits)")
