"""The workload driver: streamed OpenAI-compatible requests, one record per request.

Token counts come from the server (`usage.completion_tokens`, else the count the engine says its
stream events carry, engines.StreamCounts), never from counting SSE chunks: with speculation one
chunk can carry several tokens. A server whose streams carry neither is asked to tokenize the
finished text (the engine's tokenize_path), after the request's clock has stopped, and the record
says so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import json
import math
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
from yarl import URL

from engines import StreamCounts

from orchestrator.common import redact
from orchestrator.common.errors import AuthRefused
from orchestrator.common.probe import read_capped
from orchestrator.measure.prompts import Prompt
from orchestrator.measure.sse import EventTooLarge, SseDecoder, split_documents
from orchestrator.results.readback import validate
from orchestrator.types.records import Measured

ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
MAX_COUNT = 10**9  # no request has more tokens than this; a larger count is a broken server
# What one response may hold in memory. Real events are a few hundred bytes and a 256-token
# response a few tens of KiB; a server that ignores max_tokens is cut off here or at its deadline.
MAX_EVENT_BYTES = 1 << 20
MAX_RESPONSE_BYTES = 64 << 20
MAX_TEXT_CHARS = 512 << 10  # 32k tokens of 16 characters; a row stays small enough to read back
ERROR_BODY_BYTES = 4096


NO_COUNT = "server reported no completion token count (no usage or timings)"
# workload.follow_redirects: redirects of a request followed to its own host only (any port or
# scheme), to any host, or not at all. A refused one is an error row naming the target host.
REDIRECTS = ("same-host", "any", "none")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)  # those aiohttp follows


@dataclass(frozen=True)
class RequestSpec:
    prompt: Prompt
    phase: str  # "warmup" or "measured"
    concurrency: int
    repeat: int
    block: int = 0  # workload.blocks: the replicate start; block 0 keeps the keys of runs before blocks

    @property
    def key(self) -> str:
        start = f"b{self.block}/" if self.block else ""
        return f"{self.phase}/{start}c{self.concurrency}/r{self.repeat}/{self.prompt.set}/{self.prompt.id}"


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
                    on_record: Callable[[Measured], None], headers: dict | None = None,
                    tokenize_path: str | None = None, counts: StreamCounts | None = None,
                    open_session: Callable[..., aiohttp.ClientSession] | None = None,
                    redirects: str = "same-host") -> list[Measured]:
    """Send `specs` in order with at most `concurrency` in flight; call on_record as each ends.

    Each of the `concurrency` streams is a worker with its own connection (a closed loop, as a
    user would hold one). Every worker opens its connection before any clock starts (a handshake
    is not the server's latency), then all start together. Streams are read with aiohttp, whose
    HTTP parser is C (llhttp): at hundreds of streams of one-token chunks a pure-Python parser
    kept the one client core busy enough to show up as server latency (docs/performance.md)."""
    workers = min(concurrency, len(specs))
    if not workers:
        return []
    # Each request's own deadline bounds it whole (stream_request); this only bounds connecting.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
    tls = ssl.create_default_context()  # once: building one per connection costs milliseconds each
    base = base_url.rstrip("/")
    batch = _Batch(functools.partial(open_session or session_for, timeout, tls, headers), asyncio.Barrier(workers),
                   base, base + ENDPOINTS[api], collections.deque(specs), make_body, timeout_s, on_record,
                   base + tokenize_path if tokenize_path else None, counts, redirects)
    with no_gc_pauses():
        await asyncio.gather(*(batch.worker() for _ in range(workers)))
    return batch.records


@dataclass
class _Batch:
    """What the workers of one run_batch share: the specs not yet sent (taken in order by
    whichever worker is free), the barrier they all start at, and the records made so far."""
    connect: Callable[[], aiohttp.ClientSession]
    start: asyncio.Barrier
    base: str
    url: str
    pending: collections.deque[RequestSpec]
    make_body: Callable[[RequestSpec], dict]
    timeout_s: float
    on_record: Callable[[Measured], None]
    tokenize_url: str | None
    counts: StreamCounts | None
    redirects: str
    records: list[Measured] = field(default_factory=list)

    async def worker(self) -> None:
        async with self.connect() as session:
            await open_connection(session, self.base)
            await self.start.wait()
            while self.pending:
                spec = self.pending.popleft()
                measured = typed({**await self._request(session, spec), **spec_fields(spec)})
                self.records.append(measured)
                self.on_record(measured)
                # Let the other streams' events that are already waiting be read (and timed)
                # before this worker spends the loop's time building and sending its next request.
                await asyncio.sleep(0)

    async def _request(self, session: aiohttp.ClientSession, spec: RequestSpec) -> dict:
        rec = await measure_one(session, self.url, self.make_body(spec), self.timeout_s, self.counts,
                                self.redirects, self.tokenize_url)
        if refused(rec):
            self.pending.clear()  # the server refuses orch's credentials: send nothing more
        return rec


async def measure_one(session: aiohttp.ClientSession, url: str, body: dict, timeout_s: float,
                      counts: StreamCounts | None, redirects: str, tokenize_url: str | None) -> dict:
    """One streamed request, its count retokenized by the engine's tokenize_path where the
    stream carried none: the closed loop's (run_batch) and the open loop's (arrivals.py)."""
    rec = await stream_request(session, url, body, timeout_s, counts, redirects)
    if tokenize_url and rec["error"] == NO_COUNT:
        await _retokenize(session, tokenize_url, rec, timeout_s, body.get("max_tokens"), redirects)
    return rec


def refused(rec: dict) -> bool:
    """The server refused orch's credentials: a loop sends nothing more."""
    return rec["http_status"] in AuthRefused.STATUSES


@contextlib.contextmanager
def no_gc_pauses():
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


def session_for(timeout: aiohttp.ClientTimeout, tls: ssl.SSLContext, headers: dict | None) -> aiohttp.ClientSession:
    """One connection, kept alive; the trace marks when a request's bytes go out. run_batch's
    `open_session` replaces this (same arguments) to hand the driver another session (tests)."""
    trace = aiohttp.TraceConfig()
    # aiohttp holds the headers back and writes them with the body, so the body's write is the
    # moment the request leaves (the headers' signal can come a whole event-loop turn earlier).
    trace.on_request_headers_sent.append(_bytes_out)
    trace.on_request_chunk_sent.append(_bytes_out)
    trace.on_request_redirect.append(_on_redirect)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, ssl=tls), timeout=timeout,
                                 headers=headers, trace_configs=[trace])


async def _bytes_out(session, ctx, params) -> None:
    # The clock starts when the request's bytes go out: time this client spent queued behind
    # its other streams before that is the client's, not the server's.
    state = ctx.trace_request_ctx
    if state is not None:
        state.t_start = time.perf_counter()


class RedirectRefused(Exception):
    """A redirect that workload.follow_redirects does not allow: the message names its target."""


class _Hops:
    """What one request may follow (workload.follow_redirects) from its own host; the trace
    context of a request that is not a stream (the tokenizer's)."""

    def __init__(self, follow: str, url: str):
        if follow not in REDIRECTS:
            raise ValueError(f"follow_redirects is {follow!r}, not one of {', '.join(REDIRECTS)}")
        self.follow, self.host = follow, (URL(url).host or "").lower()
        self.t_start = 0.0  # _bytes_out sets it on any request's context


def _target(url: URL, resp: aiohttp.ClientResponse) -> URL | None:
    """Where a redirect points, resolved against the URL that answered it; None where it names
    nowhere HTTP (aiohttp refuses those itself)."""
    location = resp.headers.get("Location") or resp.headers.get("URI")
    try:
        target = url.join(URL(location)) if location else None
    except ValueError:
        return None
    return target if target is not None and target.scheme in ("http", "https") else None


def _refusal(hops: "_Hops | _StreamState", target: URL | None) -> str | None:
    """Why `hops` may not go to `target`, or None. "Another server" is another host name: two
    ports of one host are the same machine's, and an http -> https upgrade is the same server."""
    if target is None or hops.follow == "any" or (target.host or "").lower() == hops.host:
        return None
    return (f"redirect refused: the server sent the request to another host, {target.host} "
            f"({redact.public_url(str(target))}); set workload.follow_redirects = \"any\" to follow it")


async def _on_redirect(session, ctx, params: aiohttp.TraceRequestRedirectParams) -> None:
    """aiohttp's own redirect signal, sent before it follows one: a hop the request may not take
    ends the request here, before any of its bytes (or headers: an API key) go to that host."""
    hops = ctx.trace_request_ctx
    if not isinstance(hops, (_Hops, _StreamState)):
        return
    refused = _refusal(hops, _target(params.url, params.response))
    if refused:
        if isinstance(hops, _StreamState):
            hops.http_status = params.response.status
        params.response.close()  # as aiohttp does before its own refusals: the connection is not reused
        raise RedirectRefused(refused)


async def open_connection(session: aiohttp.ClientSession, base: str) -> None:
    """GET /v1/models, which every OpenAI-compatible server answers cheaply, to open the
    worker's connection; a failure is left to the measured request to record."""
    try:
        async with asyncio.timeout(10), session.get(base + "/v1/models", allow_redirects=False) as resp:
            await resp.content.read(ERROR_BODY_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        pass


def typed(rec: dict) -> Measured:
    """The record, typed and checked; a value the checks refuse (which the stream checks should
    already have caught) turns it into a failed request that says why, never a lost one."""
    measured, problems, _ = validate(Measured, rec, "as measured")
    if measured is None:  # its identity itself is broken: keep it, as a failed request
        error = f"invalid record: {'; '.join(problems)}"
        measured = Measured.model_construct(_fields_set=set(rec) | {"ok", "error"}, **{**rec, "ok": False, "error": error})
    return measured


def spec_fields(spec: RequestSpec) -> dict:
    p = spec.prompt
    labels = {k: v for k, v in (("category", p.category), ("sub_category", p.sub_category)) if v is not None}
    return {"key": spec.key, "phase": spec.phase, "concurrency": spec.concurrency,
            "repeat": spec.repeat, "prompt_set": p.set, "prompt_id": p.id, **labels}


async def stream_request(session: aiohttp.ClientSession, url: str, body: dict, timeout_s: float,
                         counts: StreamCounts | None = None, redirects: str = "same-host") -> dict:
    """One streamed request, ended by its deadline (`timeout_s`, first byte out to last byte in)
    whatever the server does: comments that keep the stream alive, tokens past max_tokens. Any
    failure, of the server or of the bytes it sent, ends as an error row, never an exception.

    A kept-alive connection that the server closed just as the request went out (llama-server
    does, now and then, right after a response) never reached it: that request is sent once more
    on a new connection, within the same deadline, and its record says `reconnected`.

    Redirects follow `redirects` (REDIRECTS); one followed is recorded as `redirected_to`."""
    started = time.monotonic()
    rec, unanswered = await _attempt(session, url, body, timeout_s, counts, redirects)
    left = timeout_s - (time.monotonic() - started)
    if unanswered and left > 0:
        rec, _ = await _attempt(session, url, body, left, counts, redirects)
        rec["reconnected"] = True
    return rec


async def _attempt(session: aiohttp.ClientSession, url: str, body: dict, timeout_s: float,
                   counts: StreamCounts | None, redirects: str = "same-host") -> tuple[dict, bool]:
    """(the record, whether the connection failed before the server answered at all)."""
    t_call, wall_call = time.perf_counter(), time.time()
    state = _StreamState(t_call, body.get("max_tokens"), counts, _Hops(redirects, url))
    t_end, unanswered = None, False
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body, trace_request_ctx=state,
                                    allow_redirects=redirects != "none") as resp:
                await _read_response(resp, state)
                t_end = time.perf_counter()  # the last event read, before the response is closed
    except RedirectRefused as exc:
        state.error = str(exc)
    except aiohttp.ClientError as exc:  # before TimeoutError: a connect timeout is both
        state.error = _describe(exc)
        unanswered = state.http_status is None and _closed_under_us(exc)
    except TimeoutError:
        state.error = (f"deadline: the request was still running after request_timeout_s = {timeout_s:g} s "
                       f"({state.chunks} text chunks read)")
    except Exception as exc:  # noqa: BLE001 - whatever a server's bytes provoke is that request's error row
        state.error = f"unexpected response ({type(exc).__name__}: {redact.credentials(str(exc))[:200]})"
    if t_end is None:
        t_end = time.perf_counter()
    return state.record(wall_call + (state.t_start - t_call), state.t_start, t_end), unanswered


def _closed_under_us(exc: aiohttp.ClientError) -> bool:
    """A connection that was open and is closed now (writing the request failed, or the server
    hung up before any answer); not one that could not be made (that is the server being down)."""
    return (isinstance(exc, (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError))
            and not isinstance(exc, aiohttp.ClientConnectorError))


async def _read_response(resp: aiohttp.ClientResponse, state: "_StreamState") -> None:
    state.http_status = resp.status
    ctype = resp.headers.get("content-type", "")
    if resp.history:  # redirects followed: say where the answer came from
        state.redirected_to = redact.public_url(str(resp.url))
        # A session without run_batch's trace (one handed in) followed them unchecked: refuse
        # the row after the fact, since the request already went there.
        refused = next(filter(None, (_refusal(state, h.url) for h in (*resp.history[1:], resp))), None)
        if refused:
            state.error = refused
            return
    if resp.status in REDIRECT_STATUSES and state.follow == "none":
        target = _target(resp.url, resp)
        where = f"{target.host} ({redact.public_url(str(target))})" if target else "nowhere orch follows"
        state.error = f"HTTP {resp.status}: a redirect to {where}, not followed (workload.follow_redirects = \"none\")"
    elif resp.status != 200:
        state.error = f"HTTP {resp.status}: {await _body_start(resp, 300)}"
    elif resp.content_type != "text/event-stream":  # the media type, lower-cased, without parameters
        detail = await _body_start(resp, 120)
        state.error = f"HTTP 200 but not an event stream ({ctype[:60] or 'no content-type'}): {detail!r}"
    else:
        await _read_events(resp, state)


async def _body_start(resp: aiohttp.ClientResponse, chars: int) -> str:
    """The start of a body, for an error message: read no more than that (a proxy's error page
    may be endless), with any credentials a server echoes back taken out."""
    data = await resp.content.read(ERROR_BODY_BYTES)
    return redact.credentials(data.decode(errors="replace"))[:chars]


async def _read_events(resp: aiohttp.ClientResponse, state: "_StreamState") -> None:
    """Feed SSE events to `state` as bytes arrive, whatever the server's chunking and framing."""
    decoder, total = SseDecoder(MAX_EVENT_BYTES), 0
    try:
        async for data in resp.content.iter_any():
            total += len(data)
            if total > MAX_RESPONSE_BYTES:
                raise StreamFault(f"the response passed {MAX_RESPONSE_BYTES >> 20} MiB; orch stops reading there")
            if any(map(state.on_event, decoder.feed(data))):  # stops at the event that ends the stream
                return
        any(map(state.on_event, decoder.close()))
    except (StreamFault, EventTooLarge) as exc:
        state.error = str(exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact.credentials(str(exc))[:300]}" if str(exc) else type(exc).__name__


class StreamFault(ValueError):
    """The server's bytes are not a stream orch can trust: the message says what was wrong."""


def _json(data: bytes):
    try:
        return json.loads(data, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise StreamFault(f"SSE data is not UTF-8: {data[:120].decode(errors='replace')!r}") from None
    except ValueError:  # bad JSON, or NaN/Infinity
        raise StreamFault(f"malformed SSE data: {data[:120].decode(errors='replace')!r}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


_WANT = {dict: "an object", list: "a list", str: "a string", (int, float): "a number"}


def _field(obj: dict, name: str, want: type | tuple, where: str):
    """obj[name] if absent, null or of type `want`; else the stream is not what it claims."""
    value = obj.get(name)
    if value is None or (isinstance(value, want) and not isinstance(value, bool)):
        return value
    raise StreamFault(f"{where}{name} is {_kind(value)} ({json.dumps(value)[:40]}), not {_WANT[want]}")


def _count(obj: dict, name: str, where: str, limit: int | None = None) -> int | None:
    """A token count: a whole number from 0 to `limit` (max_tokens where it applies)."""
    value = _field(obj, name, (int, float), where)
    if value is None:
        return None
    if isinstance(value, float) and not value.is_integer():  # 3.5, and 1e999 read as inf
        raise StreamFault(f"{where}{name} is {value!r}, not a whole number of tokens")
    if value < 0 or value > (limit if limit is not None else MAX_COUNT):
        bound = f"max_tokens = {limit}" if limit is not None else f"{MAX_COUNT:,}"
        raise StreamFault(f"{where}{name} is {_short(value)}: outside 0..{bound}")
    return int(value)


def _short(value: int | float) -> str:
    """A number for a message; an integer of 400 digits is not formatted whole (or as a float)."""
    text = str(value)
    return text if len(text) <= 16 else f"{text[:6]}... ({len(text)} digits)"


def _fits_a_float(value: int | float) -> bool:
    """An integer of 400 digits compares below infinity but is no float (the record's type)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _rate(obj: dict, name: str, where: str) -> float | None:
    value = _field(obj, name, (int, float), where)
    if value is not None and not (0 <= value < math.inf and _fits_a_float(value)):  # negative, 1e999 read as inf
        raise StreamFault(f"{where}{name} is {_short(value)}: a rate is a finite number from 0")
    return value


class _StreamState:
    def __init__(self, t_start: float, max_tokens: int | None = None, counts: StreamCounts | None = None,
                 hops: _Hops | None = None):
        self.t_start = t_start
        hops = hops or _Hops("same-host", "")
        self.follow, self.host = hops.follow, hops.host  # read by _on_redirect and _refusal
        self.redirected_to: str | None = None
        self.counts = counts
        self.max_tokens = max_tokens if isinstance(max_tokens, int) else None
        self.t_first: float | None = None
        self.parts: list[str] = []
        self.text_chars = 0
        self.chunks = 0
        # Per content chunk: arrival (s after start) and the cumulative completion tokens the
        # server reported with it (None where it reported none). Gives ITL per token.
        self.chunk_t: list[float] = []
        self.chunk_tokens: list[int | None] = []
        self.usage: dict = {}
        self.extra: dict = {}  # the engine's own counts (counts.key), as last reported
        self.so_far: dict[str, int] = {}  # each cumulative count's latest value, by its name in the stream
        self.finish_reason: str | None = None
        self.http_status: int | None = None
        self.error: str | None = None
        self.done = False

    def on_event(self, data: bytes) -> bool:
        """Consume one SSE event's data; True at the end of the stream (done, or not trustworthy)."""
        try:
            return self._event(data)
        except StreamFault as exc:
            self.error = str(exc)
            return True

    def _event(self, data: bytes) -> bool:
        if not data.strip():
            return False  # data lines with nothing on them: an event with no content
        if data.strip() == b"[DONE]":
            self.done = True
            return True
        try:
            obj = _json(data)
        except StreamFault:
            docs = split_documents(data)
            if docs is None:
                raise
            return any(self._event(doc) for doc in docs)
        return self._take(obj)

    def _take(self, obj) -> bool:
        if not isinstance(obj, dict):
            raise StreamFault(f"an SSE event's data is {_kind(obj)} ({json.dumps(obj)[:40]}), not a JSON object")
        if obj.get("error") is not None:
            self.error = f"server error: {redact.credentials(json.dumps(obj['error']))[:300]}"
            return True
        usage = _field(obj, "usage", dict, "")
        usage = _usage(usage, self.max_tokens) if usage else None
        counts = self.counts
        extra = _nested(obj, counts.key) if counts else None
        extra = _extra_counts(extra, counts, self.max_tokens) if counts and extra else None
        self._forward(usage, extra)
        self.usage, self.extra = usage or self.usage, extra or self.extra
        if self._choices(_field(obj, "choices", list, "") or []):
            self.chunk_t.append(round(time.perf_counter() - self.t_start, 6))
            self.chunk_tokens.append(self._cumulative(usage, extra))
            self._enough_tokens(usage, extra)
        return False

    def _forward(self, usage: dict | None, extra: dict | None) -> None:
        """The counts of the request so far (the completion tokens, the engine's draft counts)
        never go back from one event to the next; several events may carry the same count (a
        step's accepted drafts, sent one token per event, all carry the step's total)."""
        named = {"usage.completion_tokens": (usage or {}).get("completion_tokens")}
        if self.counts and extra:
            named.update({f"{self.counts.key}.{f}": extra.get(f) for f in self.counts.counts})
        for name, value in named.items():
            if value is None:
                continue
            before = self.so_far.get(name)
            if before is not None and value < before:
                raise StreamFault(f"{name} went back from {before} to {value} (a count of the request so far)")
            self.so_far[name] = value

    def _enough_tokens(self, usage: dict | None, extra: dict | None) -> None:
        """Every chunk with text carries a token at least: a count of the tokens so far below
        the chunks so far is a stream that contradicts itself (chunks repeated, or a count)."""
        count = self.chunk_tokens[-1]
        if count is not None and count < self.chunks:
            # A count that is not usage's is the engine's (_cumulative), so counts is set then.
            counts = self.counts
            name = ("usage.completion_tokens" if (usage or {}).get("completion_tokens") is not None or counts is None
                    else f"{counts.key}.{counts.completion}")
            raise StreamFault(f"{name} {count} < {self.chunks} chunks with text so far (each carries a token at least)")

    def _choices(self, choices: list) -> bool:
        """Take the text of one chunk; True if it carried any."""
        got = False
        for choice in choices:
            if not isinstance(choice, dict):
                raise StreamFault(f"a choice is {_kind(choice)} ({json.dumps(choice)[:40]}), not an object")
            delta = _field(choice, "delta", dict, "choices[].") or {}
            piece = (_field(delta, "content", str, "delta.") or _field(delta, "reasoning_content", str, "delta.")
                     or _field(choice, "text", str, "choices[].") or "")
            if piece:
                if self.t_first is None:
                    self.t_first = time.perf_counter()
                self.parts.append(piece)
                self.text_chars += len(piece)
                got = True
            self.finish_reason = _field(choice, "finish_reason", str, "choices[].") or self.finish_reason
        self.chunks += got
        self._check_size()
        return got

    def _check_size(self) -> None:
        """Every text chunk carries at least one token, so more chunks than max_tokens is a server
        that ignores it; the text's own bound keeps one row small enough to read back."""
        if self.max_tokens is not None and self.chunks > self.max_tokens:
            raise StreamFault(f"the server sent more text chunks than max_tokens = {self.max_tokens}")
        if self.text_chars > MAX_TEXT_CHARS:
            raise StreamFault(f"the response's text passed {MAX_TEXT_CHARS >> 10} Ki characters")

    def record(self, wall_start: float, t_start: float, t_end: float) -> dict:
        tokens, source = self._completion_tokens()
        error = self.error
        if error is None and not self.done and self.finish_reason is None:
            error = f"stream ended before [DONE] after {self.chunks} chunks (cut mid-stream)"
        if error is None:
            # _completion_tokens gives a source with every count, and neither without one.
            error = NO_COUNT if tokens is None or source is None else _contradiction(tokens, source, self.chunks)
        rec = {
            "ok": error is None, "error": error, "http_status": self.http_status, "wall_start": wall_start,
            "t_start": t_start, "t_first_token": self.t_first, "t_end": t_end,
            "completion_tokens": tokens, "completion_tokens_source": source,
            "prompt_tokens": self.usage.get("prompt_tokens"),
            "chunks": self.chunks, "finish_reason": _utf8(self.finish_reason),
            "text": _utf8("".join(self.parts)),
            **({f"{self.counts.record_prefix}_{k}": v for k, v in self.extra.items()} if self.counts else {}),
            "chunk_t": self.chunk_t, "chunk_chars": [len(p) for p in self.parts],
            "chunk_tokens": self.chunk_tokens,
            **({"redirected_to": self.redirected_to} if self.redirected_to else {}),
        }
        rec.update(rates(tokens, t_start, self.t_first, t_end) if error is None and tokens is not None else
                   {"e2e_tok_s": None, "decode_tok_s": None, "ttft_s": None})
        return rec

    def _completion_tokens(self) -> tuple[int | None, str | None]:
        if self.usage.get("completion_tokens") is not None:
            return self.usage["completion_tokens"], "usage"
        if self.counts and self.counts.completion and self.extra.get(self.counts.completion) is not None:
            return self.extra[self.counts.completion], f"{self.counts.key}.{self.counts.completion}"
        return None, None

    def _cumulative(self, usage: dict | None, extra: dict | None) -> int | None:
        """Completion tokens so far, where the server reports them per chunk (vLLM's
        continuous_usage_stats, llama.cpp's timings_per_token); both already checked."""
        count = (usage or {}).get("completion_tokens")
        if count is not None or not self.counts or not self.counts.completion:
            return count
        return (extra or {}).get(self.counts.completion)


def _contradiction(tokens: int, source: str, chunks: int) -> str | None:
    """The server's count against what its stream carried. Each chunk with text carries one
    token at least, and some engines send several per chunk, so `tokens >= chunks` is the
    invariant, never equality. No text at all allows one token, the end-of-sequence token,
    which has none."""
    name = "usage.completion_tokens" if source == "usage" else source
    if tokens < chunks:
        return f"{name} {tokens} < {chunks} chunks with text (each carries a token at least)"
    if chunks == 0 and tokens > 1:
        return f"{name} {tokens} but no chunk carried text"
    return None


def _usage(usage: dict, max_tokens: int | None) -> dict:
    return {"prompt_tokens": _count(usage, "prompt_tokens", "usage."),
            "completion_tokens": _count(usage, "completion_tokens", "usage.", max_tokens)}


def _extra_counts(obj: dict, counts: StreamCounts, max_tokens: int | None) -> dict:
    """The engine's own counts of one event, each checked: whole token counts (the completion
    count at most max_tokens), finite rates, never more accepted than drafted tokens."""
    where = f"{counts.key}."
    numbers: dict[str, int | float | None] = {
        f: _count(obj, f, where, max_tokens if f == counts.completion else None) for f in counts.counts}
    numbers.update({f: _rate(obj, f, where) for f in counts.rates})
    drafted, accepted = _named(numbers, counts.drafted), _named(numbers, counts.accepted)
    if (accepted or 0) > (drafted or 0):
        raise StreamFault(f"{where}{counts.accepted} ({accepted}) is more than {where}{counts.drafted} ({drafted or 0})")
    out: dict[str, int | float | list[int] | None] = dict(numbers)
    if counts.histogram:
        out[counts.histogram] = _histogram(obj, counts.histogram, counts, numbers, where)
    return out


def _named(values: dict[str, int | float | None], name: str | None) -> int | float | None:
    """values[name], or None where the engine names no such count (StreamCounts' optional fields)."""
    return values.get(name) if name is not None else None


MAX_BINS = 4097  # a histogram of accepted drafts per step has depth + 1 bins


def _histogram(obj: dict, key: str, counts: StreamCounts, got: dict[str, int | float | None],
               where: str) -> list[int] | None:
    """Steps by accepted drafts (obj[key], key being counts.histogram): whole counts, summing to
    the steps and, weighted, to the accepted."""
    hist = _field(obj, key, list, where)
    if hist is None:
        return None
    name = f"{where}{key}"
    if len(hist) > MAX_BINS:
        raise StreamFault(f"{name} has {len(hist)} bins, more than {MAX_BINS}")
    checked = [_count({"bin": v}, "bin", f"{name}[{j}].") for j, v in enumerate(hist)]
    bins = [b for b in checked if b is not None]
    if len(bins) != len(checked):
        raise StreamFault(f"{name} holds a null")
    steps, accepted = _named(got, counts.steps), _named(got, counts.accepted)
    if steps is not None and sum(bins) != steps:
        raise StreamFault(f"{name} counts {sum(bins)} steps, not {where}{counts.steps} ({steps})")
    weighted = sum(j * b for j, b in enumerate(bins))
    if accepted is not None and weighted != accepted:
        raise StreamFault(f"{name} accepts {weighted} tokens, not {where}{counts.accepted} ({accepted})")
    return bins


def _nested(obj: dict, key: str) -> dict | None:
    """obj[a][b]... for key "a.b..."; None where a level is absent or null."""
    where = ""
    for part in key.split("."):
        obj = _field(obj, part, dict, where)
        if obj is None:
            return None
        where += f"{part}."
    return obj


def _utf8(text: str | None) -> str | None:
    """JSON may carry lone surrogates (\\ud800) that no UTF-8 file can hold: replace them."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


async def _retokenize(session: aiohttp.ClientSession, url: str, rec: dict, timeout_s: float,
                      max_tokens: int | None, redirects: str = "same-host") -> None:
    """Count the finished text's tokens with the server's own tokenizer, less what it adds to
    empty input (a BOS token). Exact for greedy output that re-tokenizes the same way. Runs
    after the request's clock stopped, under a deadline of its own."""
    try:
        async with asyncio.timeout(timeout_s):
            counts = [await _token_count(session, url, text, rec, redirects) for text in (rec["text"], "")]
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, RecursionError, RedirectRefused) as exc:
        rec["error"] = f"{NO_COUNT}; tokenizing the text failed: {type(exc).__name__}"
        return
    tokens = max(counts[0] - counts[1], 0)
    if max_tokens is not None and tokens > max_tokens + 2:  # re-tokenizing may merge or split a token or two
        rec["error"] = f"{NO_COUNT}; its tokenizer counted {tokens} tokens for max_tokens = {max_tokens}"
        return
    rec.update(ok=True, error=None, completion_tokens=tokens, completion_tokens_source="retokenized",
               **rates(tokens, rec["t_start"], rec["t_first_token"], rec["t_end"]))


async def _token_count(session: aiohttp.ClientSession, url: str, text: str, rec: dict, redirects: str) -> int:
    async with session.post(url, json={"input": text}, trace_request_ctx=_Hops(redirects, url),
                            allow_redirects=redirects != "none") as resp:
        if resp.status in AuthRefused.STATUSES:
            rec["http_status"] = resp.status  # so the cell fails at once, as for the request itself
        resp.raise_for_status()
        body = await read_capped(resp, MAX_EVENT_BYTES)
        if body is None:
            raise ValueError("tokenize answer too large")
        tokens = json.loads(body)["tokens"]
    if not isinstance(tokens, list):
        raise TypeError("tokens is not a list")
    return len(tokens)


def rates(tokens: int, t_start: float, t_first: float | None, t_end: float) -> dict:
    """e2e includes time to first token (the published 132 vs 39 definition)."""
    e2e = tokens / (t_end - t_start) if t_end > t_start else None
    decode = None
    if t_first is not None and tokens > 1 and t_end > t_first:
        decode = (tokens - 1) / (t_end - t_first)
    ttft = t_first - t_start if t_first is not None else None
    return {"e2e_tok_s": e2e, "decode_tok_s": decode, "ttft_s": ttft}
