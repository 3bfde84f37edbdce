"""The workload driver: streamed OpenAI-compatible requests, one record per request.

Token counts come from the server (`usage.completion_tokens`, else llama.cpp's
`timings.predicted_n`), never from counting SSE chunks: with speculation one chunk can
carry several tokens. A server whose streams carry neither (llama-cpp-python) is asked to
tokenize the finished text, after the request's clock has stopped, and the record says so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import ssl
import time
from dataclasses import dataclass
from typing import Callable

import aiohttp

from .prompts import Prompt

ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
TIMING_FIELDS = ("prompt_n", "prompt_per_second", "predicted_n", "predicted_per_second",
                 "draft_n", "draft_n_accepted")


NO_COUNT = "server reported no completion token count (no usage or timings)"


@dataclass(frozen=True)
class RequestSpec:
    prompt: Prompt
    phase: str  # "warmup" or "measured"
    concurrency: int
    repeat: int

    @property
    def key(self) -> str:
        return f"{self.phase}/c{self.concurrency}/r{self.repeat}/{self.prompt.set}/{self.prompt.id}"


def request_body(api: str, text: str, model: str, workload, extra: dict) -> dict:
    body = {"model": model, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "max_tokens": workload.max_tokens, "temperature": workload.temperature,
            "seed": workload.seed, **extra}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return body


async def run_batch(base_url: str, api: str, specs: list[RequestSpec], concurrency: int,
                    make_body: Callable[[RequestSpec], dict], timeout_s: float,
                    on_record: Callable[[dict], None], headers: dict | None = None,
                    tokenize_path: str | None = None) -> list[dict]:
    """Send `specs` in order with at most `concurrency` in flight; call on_record as each ends.

    Each of the `concurrency` streams is a worker with its own connection (a closed loop, as a
    user would hold one). Every worker opens its connection before any clock starts (a handshake
    is not the server's latency), then all start together. Streams are read with aiohttp, whose
    HTTP parser is C (llhttp): at hundreds of streams of one-token chunks a pure-Python parser
    kept the one client core busy enough to show up as server latency (docs/performance.md)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=timeout_s)
    tls = ssl.create_default_context()  # once: building one per connection costs milliseconds each
    pending = collections.deque(specs)
    workers = min(concurrency, len(specs))
    start = asyncio.Barrier(workers) if workers else None
    records: list[dict] = []
    base = base_url.rstrip("/")

    async def worker() -> None:
        async with _session(timeout, tls, headers) as session:
            await open_connection(session, base)
            await start.wait()
            while pending:
                spec = pending.popleft()
                rec = await stream_request(session, base + ENDPOINTS[api], make_body(spec), timeout_s)
                if tokenize_path and rec["error"] == NO_COUNT:
                    await _retokenize(session, base + tokenize_path, rec)
                rec.update(_spec_fields(spec))
                records.append(rec)
                on_record(rec)
                # Let the other streams' events that are already waiting be read (and timed)
                # before this worker spends the loop's time building and sending its next request.
                await asyncio.sleep(0)

    with _no_gc_pauses():
        await asyncio.gather(*(worker() for _ in range(workers)))
    return records


@contextlib.contextmanager
def _no_gc_pauses():
    """Hold the cyclic garbage collector off while requests are timed. A full collection over
    a process holding pandas and matplotlib stalls every stream at once for tens of
    milliseconds, which the records would show as server latency (docs/performance.md). A
    request leaves little cyclic garbage; the usual thresholds collect it after the batch."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _session(timeout: aiohttp.ClientTimeout, tls: ssl.SSLContext, headers: dict | None) -> aiohttp.ClientSession:
    """One connection, kept alive; the trace marks when a request's bytes go out."""
    trace = aiohttp.TraceConfig()
    # aiohttp holds the headers back and writes them with the body, so the body's write is the
    # moment the request leaves (the headers' signal can come a whole event-loop turn earlier).
    trace.on_request_headers_sent.append(_bytes_out)
    trace.on_request_chunk_sent.append(_bytes_out)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, ssl=tls), timeout=timeout,
                                 headers=headers, trace_configs=[trace])


async def _bytes_out(session, ctx, params) -> None:
    # The clock starts when the request's bytes go out: time this client spent queued behind
    # its other streams before that is the client's, not the server's.
    state = ctx.trace_request_ctx
    if state is not None:
        state.t_start = time.perf_counter()


async def open_connection(session: aiohttp.ClientSession, base: str) -> None:
    """GET /v1/models, which every OpenAI-compatible server answers cheaply, to open the
    worker's connection; a failure is left to the measured request to record."""
    try:
        async with session.get(base + "/v1/models") as resp:
            await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass


def _spec_fields(spec: RequestSpec) -> dict:
    return {"key": spec.key, "phase": spec.phase, "concurrency": spec.concurrency,
            "repeat": spec.repeat, "prompt_set": spec.prompt.set, "prompt_id": spec.prompt.id}


async def stream_request(session: aiohttp.ClientSession, url: str, body: dict, timeout_s: float) -> dict:
    t_call, wall_call = time.perf_counter(), time.time()
    state = _StreamState(t_call)
    t_end = None
    try:
        async with session.post(url, json=body, trace_request_ctx=state) as resp:
            ctype = resp.headers.get("content-type", "")
            if resp.status != 200:
                detail = (await resp.read()).decode(errors="replace")[:300]
                state.error = f"HTTP {resp.status}: {detail}"
            elif "text/event-stream" not in ctype:
                detail = (await resp.read()).decode(errors="replace")[:120]
                state.error = f"HTTP 200 but not an event stream ({ctype or 'no content-type'}): {detail!r}"
            else:
                await _read_events(resp, state)
            t_end = time.perf_counter()  # the last event read, before the response is closed
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        state.error = _describe(exc, timeout_s)
    if t_end is None:
        t_end = time.perf_counter()
    return state.record(wall_call + (state.t_start - t_call), state.t_start, t_end)


async def _read_events(resp: aiohttp.ClientResponse, state: "_StreamState") -> None:
    """Feed SSE lines to `state` as bytes arrive, whatever the server's chunking."""
    tail = b""
    async for data in resp.content.iter_any():
        *lines, tail = (tail + data).split(b"\n")
        for line in lines:
            if state.feed(line):
                return
    if tail:
        state.feed(tail)


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"ReadTimeout: no bytes from the server for {timeout_s:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _StreamState:
    def __init__(self, t_start: float):
        self.t_start = t_start
        self.t_first: float | None = None
        self.parts: list[str] = []
        self.chunks = 0
        # Per content chunk: arrival (s after start) and the cumulative completion tokens the
        # server reported with it (None where it reported none). Gives ITL per token.
        self.chunk_t: list[float] = []
        self.chunk_tokens: list[int | None] = []
        self.usage: dict | None = None
        self.timings: dict | None = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.done = False

    def feed(self, line: bytes) -> bool:
        """Consume one SSE line; True at the end of the stream."""
        if not line.startswith(b"data:"):
            return False
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return True
        try:
            obj = json.loads(data)
        except ValueError:  # bad JSON or bad UTF-8
            self.error = f"malformed SSE data: {data[:120].decode(errors='replace')!r}"
            return True
        if "error" in obj:
            self.error = f"server error: {json.dumps(obj['error'])[:300]}"
            return True
        self.usage = obj.get("usage") or self.usage
        self.timings = obj.get("timings") or self.timings
        if self._choices(obj.get("choices") or []):
            self.chunk_t.append(round(time.perf_counter() - self.t_start, 6))
            self.chunk_tokens.append(_cumulative_tokens(obj))
        return False

    def _choices(self, choices: list) -> bool:
        """Take the text of one chunk; True if it carried any."""
        got = False
        for choice in choices:
            delta = choice.get("delta") or {}
            piece = delta.get("content") or delta.get("reasoning_content") or choice.get("text") or ""
            if piece:
                if self.t_first is None:
                    self.t_first = time.perf_counter()
                self.parts.append(piece)
                got = True
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.chunks += got
        return got

    def record(self, wall_start: float, t_start: float, t_end: float) -> dict:
        tokens, source = self._completion_tokens()
        timings = {f: self.timings.get(f) for f in TIMING_FIELDS} if self.timings else {}
        error = self.error
        if error is None and not self.done and self.finish_reason is None:
            error = f"stream ended before [DONE] after {self.chunks} chunks (cut mid-stream)"
        if error is None and tokens is None:
            error = NO_COUNT
        rec = {
            "ok": error is None, "error": error, "wall_start": wall_start,
            "t_start": t_start, "t_first_token": self.t_first, "t_end": t_end,
            "completion_tokens": tokens, "completion_tokens_source": source,
            "prompt_tokens": (self.usage or {}).get("prompt_tokens"),
            "chunks": self.chunks, "finish_reason": self.finish_reason,
            "text": "".join(self.parts), **{f"timings_{k}": v for k, v in timings.items()},
            "chunk_t": self.chunk_t, "chunk_chars": [len(p) for p in self.parts],
            "chunk_tokens": self.chunk_tokens,
        }
        rec.update(rates(tokens, t_start, self.t_first, t_end) if error is None else
                   {"e2e_tok_s": None, "decode_tok_s": None, "ttft_s": None})
        return rec

    def _completion_tokens(self) -> tuple[int | None, str | None]:
        if self.usage and self.usage.get("completion_tokens") is not None:
            return int(self.usage["completion_tokens"]), "usage"
        if self.timings and self.timings.get("predicted_n") is not None:
            return int(self.timings["predicted_n"]), "timings.predicted_n"
        return None, None


async def _retokenize(session: aiohttp.ClientSession, url: str, rec: dict) -> None:
    """Count the finished text's tokens with the server's own tokenizer, less what it adds to
    empty input (a BOS token). Exact for greedy output that re-tokenizes the same way."""
    try:
        counts = []
        for text in (rec["text"], ""):
            async with session.post(url, json={"input": text}, raise_for_status=True) as resp:
                counts.append(len((await resp.json(content_type=None))["tokens"]))
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as exc:
        rec["error"] = f"{NO_COUNT}; tokenizing the text failed: {type(exc).__name__}"
        return
    tokens = counts[0] - counts[1]
    rec.update(ok=True, error=None, completion_tokens=tokens, completion_tokens_source="retokenized",
               **rates(tokens, rec["t_start"], rec["t_first_token"], rec["t_end"]))


def _cumulative_tokens(obj: dict) -> int | None:
    """Completion tokens so far, where the server reports them per chunk
    (vLLM continuous_usage_stats, llama.cpp timings_per_token)."""
    usage, timings = obj.get("usage") or {}, obj.get("timings") or {}
    count = usage.get("completion_tokens", timings.get("predicted_n"))
    return int(count) if count is not None else None


def rates(tokens: int, t_start: float, t_first: float | None, t_end: float) -> dict:
    """e2e includes time to first token (the published 132 vs 39 definition)."""
    e2e = tokens / (t_end - t_start) if t_end > t_start else None
    decode = None
    if t_first is not None and tokens > 1 and t_end > t_first:
        decode = (tokens - 1) / (t_end - t_first)
    ttft = t_first - t_start if t_first is not None else None
    return {"e2e_tok_s": e2e, "decode_tok_s": decode, "ttft_s": ttft}
