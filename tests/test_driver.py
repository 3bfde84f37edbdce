import asyncio
import json

import httpx
import pytest

from orchestrator.driver import rates, stream_request


def sse(*objs, done=True) -> bytes:
    out = "".join(f"data: {json.dumps(o)}\n\n" for o in objs)
    return (out + ("data: [DONE]\n\n" if done else "")).encode()


def stream(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def chunk(text):
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def run(handler, body=None) -> dict:
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://t") as c:
            return await stream_request(c, "/v1/chat/completions", body or {"stream": True})
    return asyncio.run(go())


def test_tokens_come_from_usage_not_chunks():
    # 3 chunks carrying 12 tokens in all, as a speculative engine sends them.
    body = sse(chunk("one two three four"), chunk(" five six seven eight"), chunk(" nine ten eleven twelve"),
               {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 12},
                "timings": {"predicted_n": 12, "draft_n": 10, "draft_n_accepted": 9}})
    rec = run(lambda req: stream(body))
    assert rec["ok"] and rec["error"] is None
    assert (rec["completion_tokens"], rec["completion_tokens_source"], rec["chunks"]) == (12, "usage", 3)
    assert (rec["prompt_tokens"], rec["timings_draft_n"], rec["timings_draft_n_accepted"]) == (7, 10, 9)
    assert rec["text"] == "one two three four five six seven eight nine ten eleven twelve"
    assert rec["e2e_tok_s"] == pytest.approx(12 / (rec["t_end"] - rec["t_start"]), rel=1e-12)
    assert rec["decode_tok_s"] == pytest.approx(11 / (rec["t_end"] - rec["t_first_token"]), rel=1e-12)


def test_timings_predicted_n_is_the_fallback():
    body = sse(chunk("a"), chunk("b"), {"choices": [], "timings": {"predicted_n": 5}})
    rec = run(lambda req: stream(body))
    assert (rec["completion_tokens"], rec["completion_tokens_source"]) == (5, "timings.predicted_n")


def test_no_server_count_is_an_error_row_not_a_chunk_count():
    rec = run(lambda req: stream(sse(chunk("a"), chunk("b"))))
    assert not rec["ok"] and rec["completion_tokens"] is None
    assert "no completion token count" in rec["error"] and rec["e2e_tok_s"] is None


def test_completions_text_field_is_read():
    body = sse({"choices": [{"text": "xyz", "index": 0}]}, {"choices": [], "usage": {"completion_tokens": 2}})
    rec = run(lambda req: stream(body))
    assert rec["text"] == "xyz" and rec["completion_tokens"] == 2


@pytest.mark.parametrize("status", [500, 429, 503])
def test_http_errors_become_rows(status):
    rec = run(lambda req: httpx.Response(status, content=b"overloaded"))
    assert not rec["ok"] and rec["error"] == f"HTTP {status}: overloaded"


def test_malformed_sse_and_server_error_objects():
    rec = run(lambda req: stream(b"data: {not json\n\n"))
    assert not rec["ok"] and rec["error"].startswith("malformed SSE data")
    rec = run(lambda req: stream(sse({"error": {"message": "ctx full"}})))
    assert not rec["ok"] and "ctx full" in rec["error"]


def test_connection_failure_is_a_row():
    def refuse(req):
        raise httpx.ConnectError("connection refused")
    rec = run(refuse)
    assert not rec["ok"] and rec["error"] == "ConnectError: connection refused"


def test_request_body_is_sent_as_given():
    seen = {}

    def handler(req):
        seen.update(json.loads(req.content))
        return stream(sse({"choices": [], "usage": {"completion_tokens": 1}}))
    run(handler, {"stream": True, "cache_prompt": False, "seed": 1234})
    assert seen == {"stream": True, "cache_prompt": False, "seed": 1234}


def test_rates_definitions():
    r = rates(101, t_start=10.0, t_first=10.5, t_end=12.5)
    assert r == {"e2e_tok_s": 101 / 2.5, "decode_tok_s": 100 / 2.0, "ttft_s": 0.5}
    assert rates(1, 0.0, 0.2, 0.2)["decode_tok_s"] is None


def test_batch_opens_every_connection_first_then_keeps_order_and_concurrency(monkeypatch):
    from orchestrator.driver import RequestSpec, run_batch
    from orchestrator.prompts import Prompt

    events, inflight, peak = [], 0, 0

    async def handler(req):
        nonlocal inflight, peak
        if req.method == "GET":
            events.append("GET")
            return httpx.Response(200, json={"data": []})
        events.append(json.loads(req.content)["prompt"])
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.01)
        inflight -= 1
        return stream(sse({"choices": [{"text": "a", "index": 0}]}, {"choices": [], "usage": {"completion_tokens": 1}}))

    real = httpx.AsyncClient
    monkeypatch.setattr(httpx, "AsyncClient", lambda *a, **k: real(*a, **k, transport=httpx.MockTransport(handler)))
    specs = [RequestSpec(Prompt("s", str(i), f"p{i}"), "measured", 3, 0) for i in range(8)]
    recs = asyncio.run(run_batch("http://t", "completions", specs, 3, lambda s: {"prompt": s.prompt.text}, 10,
                                 lambda r: None))
    assert events[:3] == ["GET"] * 3 and "GET" not in events[3:]  # 3 streams, each connected before any clock
    assert events[3:] == [f"p{i}" for i in range(8)]  # sent in order
    assert peak == 3 and len(recs) == 8 and all(r["ok"] for r in recs)
