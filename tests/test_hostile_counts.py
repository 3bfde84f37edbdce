"""Servers whose token counts contradict their own streams, and servers that redirect elsewhere.

Each case is sent through run_batch to a real local aiohttp server (tests/support/canned_server.py)
next to honest requests: every request sent gives a row, in bounded time, and a stream whose count
cannot be true is an error row that says why, so summary.csv's medians hold only the honest rows.
A redirect is followed to the same host and recorded; to another host (127.0.0.2 or "localhost"
for a server on 127.0.0.1: another name is another server) it is an error row naming that host,
and nothing is sent there, unless workload.follow_redirects = "any"."""

import asyncio
import statistics
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from engines.llama_server import LlamaServer  # llama.cpp's timings: cumulative counts per event
from orchestrator.analysis.summary import summarize
from orchestrator.measure.driver import NO_COUNT, RequestSpec, run_batch, stream_request
from orchestrator.measure.prompts import Prompt
from orchestrator.types.records import CellRecord, RequestRecord
from orchestrator.types.scenario import Workload

from .support.canned_server import event_stream, serve, sse

TIMINGS = LlamaServer.stream_counts
BOUND_S = 20  # every batch here ends well within this, whatever the server sent


def chunk(text, usage=None, timings=None, finish=None):
    obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    if usage is not None:
        obj["usage"] = {"prompt_tokens": 5, "completion_tokens": usage}
    if timings is not None:
        obj["timings"] = timings
    return obj


def final(tokens, finish="length"):
    return [{"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
            {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": tokens}}]


HONEST = sse(*[chunk(f" w{i}") for i in range(8)], *final(8))

# Each a stream whose count the stream itself disproves, and the error its row must carry.
HOSTILE = {
    "8 chunks of text, usage says 1": (
        sse(*[chunk(f" w{i}") for i in range(8)], *final(1)),
        "usage.completion_tokens 1 < 8 chunks with text"),
    "8 tokens claimed, no text at all": (
        sse(*[chunk("") for _ in range(8)], *final(8)),
        "usage.completion_tokens 8 but no chunk carried text"),
    "per-chunk usage goes backwards": (
        sse(chunk(" a", usage=1), chunk(" b", usage=2), chunk(" c", usage=3), chunk(" d", usage=2), *final(4)),
        "usage.completion_tokens went back from 3 to 2"),
    "the final usage is below a chunk's": (
        sse(*[chunk(f" w{i}", usage=i + 1) for i in range(6)], *final(4)),
        "usage.completion_tokens went back from 6 to 4"),
    "timings.predicted_n goes backwards": (
        sse(*[chunk(f" w{i}", timings={"predicted_n": n}) for i, n in enumerate([1, 2, 5, 3])],
            {"choices": [], "timings": {"predicted_n": 5}}),
        "timings.predicted_n went back from 5 to 3"),
    "timings.draft_n goes backwards": (
        sse(chunk(" a", timings={"predicted_n": 1, "draft_n": 4, "draft_n_accepted": 1}),
            chunk(" b", timings={"predicted_n": 2, "draft_n": 2, "draft_n_accepted": 1}), *final(2)),
        "timings.draft_n went back from 4 to 2"),
    "every chunk sent twice, usage of the originals": (
        sse(*[c for i in range(4) for c in (chunk(f" w{i}"),) * 2], *final(4)),
        "usage.completion_tokens 4 < 8 chunks with text"),
    "every chunk sent twice with its per-chunk usage": (
        sse(*[c for i in range(4) for c in (chunk(f" w{i}", usage=i + 1),) * 2], *final(4)),
        "usage.completion_tokens 1 < 2 chunks with text so far"),
    "a count below the chunks in llama.cpp's timings": (
        sse(*[chunk(f" w{i}", timings={"predicted_n": 1}) for i in range(3)],
            {"choices": [], "timings": {"predicted_n": 1}}),
        "timings.predicted_n 1 < 2 chunks with text so far"),
}

# Streams that look odd and are honest: none may become an error row.
LEGAL = {
    # A speculative engine's chunks of several tokens each: count above the chunks.
    "multi-token chunks": (sse(chunk(" a b c", usage=3), chunk(" d e f g", usage=7), *final(7)), 7, 2),
    # llama.cpp sends a step's accepted drafts one token per event, each with the step's total.
    "one step's tokens share its count": (
        sse(*[chunk(f" w{i}", timings={"predicted_n": n}) for i, n in enumerate([1, 4, 4, 4, 5])],
            {"choices": [], "timings": {"predicted_n": 5}}), 5, 5),
    # A repeated token gives an event identical to the one before (OpenAI's id is the completion's).
    "a token repeated: identical chunks": (sse(*[chunk(" the")] * 4, *final(4)), 4, 4),
    # An answer that is the end-of-sequence token alone: one token, no text.
    "end of sequence at once": (sse(*final(1, "stop")), 1, 0),
}


def spec(case: str, i: int) -> RequestSpec:
    return RequestSpec(Prompt("hostile", f"{case}#{i}", "x"), "measured", 2, 0)


def body_for(s: RequestSpec) -> dict:
    return {"stream": True, "max_tokens": 64, "case": s.prompt.id.split("#")[0]}


def batch(streams: dict[str, bytes], specs: list[RequestSpec], concurrency: int = 2, **kw) -> tuple[list, float]:
    """run_batch over `specs`, each answered with streams[its case]; the rows and the seconds it took."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"data": []})
        return event_stream(streams[(await request.json())["case"]])

    async def client(base):
        return await run_batch(base, "chat", specs, concurrency, body_for, 10, lambda r: None, counts=TIMINGS, **kw)
    started = time.monotonic()
    rows = serve(handler, client)
    return rows, time.monotonic() - started


def summary_of(rows) -> dict:
    records = [RequestRecord.of(r, cell_id="e-n0", engine="e", method="none", n_spec=0) for r in rows]
    cell = CellRecord(cell_id="e-n0", engine="e", method="none", n_spec=0, status="ok")
    (row,) = summarize(records, [cell]).to_dict("records")
    return row


@pytest.mark.parametrize("case", HOSTILE)
def test_a_count_the_stream_contradicts_is_an_error_row_kept_out_of_the_medians(case):
    stream, error = HOSTILE[case]
    specs = [spec("honest", i) for i in range(4)] + [spec(case, i) for i in range(3)]
    rows, took = batch({"honest": HONEST, case: stream}, specs)
    assert took < BOUND_S and len(rows) == len(specs)  # a row for every request sent
    assert sorted(r.prompt_id for r in rows) == sorted(s.prompt.id for s in specs)
    for r in rows:
        if r.prompt_id.startswith("honest"):
            assert r.ok and r.completion_tokens == 8 and r.chunks == 8, r.error
        else:
            assert not r.ok and error in r.error, (case, r.error)
            assert r.e2e_tok_s is None and r.decode_tok_s is None and r.ttft_s is None
    s = summary_of(rows)
    assert (s["requests_ok"], s["requests_failed"]) == (4, 3)
    honest = [r.e2e_tok_s for r in rows if r.ok]
    assert s["e2e_tok_s_median"] == pytest.approx(statistics.median(honest))
    assert s["completion_tokens_median"] == 8


@pytest.mark.parametrize("case", LEGAL)
def test_honest_streams_that_look_odd_stay_ok(case):
    stream, tokens, chunks = LEGAL[case]
    rows, took = batch({case: stream}, [spec(case, i) for i in range(2)])
    assert took < BOUND_S and len(rows) == 2
    for r in rows:
        assert r.ok, (case, r.error)
        assert (r.completion_tokens, r.chunks) == (tokens, chunks)


def test_a_count_retokenized_by_orch_is_not_held_to_the_chunks():
    # llama-cpp-python's streams carry no count; orch's own re-tokenizing may merge two streamed
    # tokens into one (" the" + "re"), so its count is orch's estimate, not the server's claim.
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/extras/tokenize":
            text = (await request.json())["input"]
            return web.json_response({"tokens": [1] + ([7] if text else [])})
        if request.method == "GET":
            return web.json_response({"data": []})
        return event_stream(sse(chunk(" the"), chunk("re", finish="stop")))

    async def client(base):
        return await run_batch(base, "chat", [spec("x", 0)], 1, body_for, 10, lambda r: None,
                               tokenize_path="/extras/tokenize")
    (rec,) = serve(handler, client)
    assert rec.ok and (rec.completion_tokens, rec.chunks, rec.completion_tokens_source) == (1, 2, "retokenized")


# ---------------------------------------------------------------- redirects


def _app(handler) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def _base(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def with_target(target, client, host="127.0.0.2"):
    """`client(target_url)` with a real server on `host` (another host than 127.0.0.1, where
    each test's origin runs) answering every path with `target`."""
    async def go():
        async with TestServer(_app(target), host=host) as server:
            return await client(_base(server))
    return asyncio.run(go())


class Target:
    """The server a redirect points at: an honest stream, and a count of what reached it."""

    def __init__(self):
        self.posts = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"data": []})
        self.posts += 1
        await request.read()
        return event_stream(HONEST)


def redirecting(location: str, status: int = 307):
    """An origin that answers every POST with a redirect to `location`; GETs (each worker's
    /v1/models) are answered here."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"data": []})
        await request.read()
        return web.Response(status=status, headers={"Location": location})
    return handler


PATH = "/v1/chat/completions"


def redirected(policy: str | None, host: str = "127.0.0.2", n: int = 3, to=lambda url: url + PATH):
    """n requests, two at a time, to an origin on 127.0.0.1 that redirects each to to(the target
    server's URL), the target on `host`: (rows, the target, its URL, seconds)."""
    target, urls = Target(), {}

    async def client(target_url):
        urls["target"] = target_url
        kw = {"redirects": policy} if policy else {}
        async with TestServer(_app(redirecting(to(target_url))), host="127.0.0.1") as origin:
            return await run_batch(_base(origin), "chat", [spec("r", i) for i in range(n)], 2, body_for, 10,
                                   lambda r: None, **kw)
    started = time.monotonic()
    rows = with_target(target.handle, client, host)
    return rows, target, urls["target"], time.monotonic() - started


def test_a_redirect_to_another_host_is_refused_by_default_and_nothing_goes_there():
    rows, target, url, took = redirected(None)
    assert took < BOUND_S and len(rows) == 3 and target.posts == 0
    for r in rows:
        assert not r.ok and r.http_status == 307
        assert r.error == (f"redirect refused: the server sent the request to another host, 127.0.0.2 ({url}{PATH}); "
                           'set workload.follow_redirects = "any" to follow it')
        assert r.e2e_tok_s is None and r.redirected_to is None
    s = summary_of(rows)
    assert (s["requests_ok"], s["requests_failed"]) == (0, 3)


def test_localhost_is_another_host_than_127_0_0_1():
    # The same loopback address under another name: another server, as far as a URL can say.
    rows, target, _, _ = redirected(None, host="127.0.0.1", to=lambda url: url.replace("127.0.0.1", "localhost") + PATH)
    assert target.posts == 0 and len(rows) == 3
    assert all(not r.ok and "another host, localhost (" in r.error for r in rows)


def test_a_redirect_to_another_host_is_followed_and_recorded_when_the_scenario_allows_any():
    rows, target, url, took = redirected("any")
    assert took < BOUND_S and len(rows) == 3 and target.posts == 3
    for r in rows:
        assert r.ok and r.completion_tokens == 8, r.error
        assert r.redirected_to == url + PATH


def test_a_redirect_to_the_same_host_is_followed_and_recorded():
    # Another port of the same host: the origin's own machine. Followed, and the row says so.
    rows, target, url, _ = redirected(None, host="127.0.0.1")
    assert target.posts == 3
    for r in rows:
        assert r.ok, r.error
        assert r.redirected_to == url + PATH


def test_with_follow_redirects_none_even_the_same_host_is_an_error_row_naming_it():
    rows, target, url, _ = redirected("none", host="127.0.0.1")
    assert target.posts == 0 and len(rows) == 3
    for r in rows:
        assert not r.ok and r.http_status == 307
        assert r.error == f'HTTP 307: a redirect to 127.0.0.1 ({url}{PATH}), not followed (workload.follow_redirects = "none")'


@pytest.mark.parametrize("policy", ["same-host", "any"])
def test_a_redirect_to_a_non_http_scheme_is_an_error_row_whatever_the_policy(policy):
    rows, _, _, took = redirected(policy, to=lambda url: "file:///etc/passwd")
    assert took < BOUND_S and len(rows) == 3
    assert all(not r.ok and "NonHttpUrlRedirectClientError" in r.error for r in rows)


def test_a_redirect_loop_ends_as_error_rows_in_bounded_time():
    async def loop(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"data": []})
        await request.read()
        return web.Response(status=307, headers={"Location": request.path})

    async def client(base):
        return await run_batch(base, "chat", [spec("r", i) for i in range(3)], 2, body_for, 10, lambda r: None)
    started = time.monotonic()
    rows = serve(loop, client)
    assert time.monotonic() - started < BOUND_S and len(rows) == 3
    assert all(not r.ok and "TooManyRedirects" in r.error for r in rows)


def test_a_session_handed_in_without_orchs_trace_still_gives_a_refused_row():
    # stream_request on a plain session (no redirect hook) follows the redirect; the row is
    # refused after the fact, and never becomes an ok row.
    async def client(target_url):
        async with TestServer(_app(redirecting(target_url + PATH)), host="127.0.0.1") as origin, \
                aiohttp.ClientSession() as session:
            return await stream_request(session, _base(origin) + PATH, {"max_tokens": 64}, 10, TIMINGS)
    rec = with_target(Target().handle, client)
    assert not rec["ok"] and "another host, 127.0.0.2 (" in rec["error"]
    assert rec["redirected_to"].startswith("http://127.0.0.2:")


def test_a_tokenizer_redirected_to_another_host_is_refused():
    target = Target()

    async def client(target_url):
        async def origin(request: web.Request) -> web.StreamResponse:
            if request.path == "/extras/tokenize":
                return web.Response(status=307, headers={"Location": target_url + request.path})
            if request.method == "GET":
                return web.json_response({"data": []})
            return event_stream(sse(chunk(" a"), chunk(" b", finish="stop")))
        async with TestServer(_app(origin), host="127.0.0.1") as server:
            return await run_batch(_base(server), "chat", [spec("t", 0)], 1, body_for, 10, lambda r: None,
                                   tokenize_path="/extras/tokenize")
    (rec,) = with_target(target.handle, client)
    assert not rec.ok and rec.error == f"{NO_COUNT}; tokenizing the text failed: RedirectRefused"
    assert target.posts == 0


def test_follow_redirects_is_a_workload_key_with_three_values():
    assert Workload().follow_redirects == "same-host"
    assert Workload(follow_redirects="any").follow_redirects == "any"
    with pytest.raises(ValidationError, match="same-host"):
        Workload(follow_redirects="sometimes")
