"""The workload driver: streamed OpenAI-compatible requests, one record per request.

Token counts come from the server (`usage.completion_tokens`, else llama.cpp's
`timings.predicted_n`), never from counting SSE chunks: with speculation one chunk can
carry several tokens. A server whose streams carry neither (llama-cpp-python) is asked to
tokenize the finished text, after the request's clock has stopped, and the record says so.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass
from typing import Callable

import httpx

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
    user would hold one): one shared pool of hundreds of connections costs httpx time per
    request that grows with the pool and shows up as server latency. Every worker opens its
    connection before any clock starts (a handshake is not the server's latency), then all start
    together."""
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    ssl = httpx.create_ssl_context()  # once: building one per client costs milliseconds each
    pending = collections.deque(specs)
    workers = min(concurrency, len(specs))
    start = asyncio.Barrier(workers) if workers else None
    records: list[dict] = []

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, verify=ssl,
                                     limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as client:
            await open_connection(client)
            await start.wait()
            while pending:
                spec = pending.popleft()
                rec = await stream_request(client, ENDPOINTS[api], make_body(spec))
                if tokenize_path and rec["error"] == NO_COUNT:
                    await _retokenize(client, tokenize_path, rec)
                rec.update(_spec_fields(spec))
                records.append(rec)
                on_record(rec)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return records


async def open_connection(client: httpx.AsyncClient) -> None:
    """GET /v1/models, which every OpenAI-compatible server answers cheaply, to open the
    worker's connection; a failure is left to the measured request to record."""
    try:
        await client.get("/v1/models")
    except httpx.HTTPError:
        pass


def _spec_fields(spec: RequestSpec) -> dict:
    return {"key": spec.key, "phase": spec.phase, "concurrency": spec.concurrency,
            "repeat": spec.repeat, "prompt_set": spec.prompt.set, "prompt_id": spec.prompt.id}


async def stream_request(client: httpx.AsyncClient, path: str, body: dict) -> dict:
    t_call, wall_call = time.perf_counter(), time.time()
    state = _StreamState(t_call)

    async def trace(event: str, info: dict) -> None:
        # The clock starts when the request's first bytes go out: time this client spent
        # queued behind its other streams before that is the client's, not the server's.
        if event.endswith("send_request_headers.started"):
            state.t_start = time.perf_counter()

    t_end = None
    try:
        async with client.stream("POST", path, json=body, extensions={"trace": trace}) as resp:
            ctype = resp.headers.get("content-type", "")
            if resp.status_code != 200:
                detail = (await resp.aread()).decode(errors="replace")[:300]
                state.error = f"HTTP {resp.status_code}: {detail}"
            elif "text/event-stream" not in ctype:
                detail = (await resp.aread()).decode(errors="replace")[:120]
                state.error = f"HTTP 200 but not an event stream ({ctype or 'no content-type'}): {detail!r}"
            else:
                async for line in resp.aiter_lines():
                    if state.feed(line):
                        break
            t_end = time.perf_counter()  # the last event read, before the response is closed
    except httpx.HTTPError as exc:
        state.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if t_end is None:
        t_end = time.perf_counter()
    return state.record(wall_call + (state.t_start - t_call), state.t_start, t_end)


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

    def feed(self, line: str) -> bool:
        """Consume one SSE line; True at the end of the stream."""
        if not line.startswith("data:"):
            return False
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return True
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"malformed SSE data: {data[:120]!r}"
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


async def _retokenize(client: httpx.AsyncClient, path: str, rec: dict) -> None:
    """Count the finished text's tokens with the server's own tokenizer, less what it adds to
    empty input (a BOS token). Exact for greedy output that re-tokenizes the same way."""
    try:
        counts = []
        for text in (rec["text"], ""):
            resp = await client.post(path, json={"input": text})
            resp.raise_for_status()
            counts.append(len(resp.json()["tokens"]))
    except (httpx.HTTPError, ValueError, KeyError) as exc:
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
