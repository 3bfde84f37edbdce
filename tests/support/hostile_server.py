"""A hostile OpenAI-compatible server for the fuzz test (tests/test_fuzz.py), on 127.0.0.1.

Every POST gets a seeded mutation of a valid completions stream: SSE framing, shapes, types,
values, cut points, HTTP status, streams that never end, and responses too big to buffer. The
mutation is a function of (seed, prompt text) alone, so a run is reproducible whatever order the
requests arrive in. A prompt "fuzz case I" takes label schedule(seed, n)[I], so every label
appears, the slow ones (DEADLINE, HUGE) only RARE_REPEATS times each, and http_401 once, last
(a refusal of credentials ends the cell); any other prompt takes a label drawn from its hash. The server records what it sent for each prompt and what a client
must make of it: "ok" with the stream's token count and text, or an error.

It runs aiohttp in a thread with its own event loop. Every response ends by itself within CAP_S
(bounded loops, a hard wait_for), and leaving the `with` block stops the server within seconds.

One case by hand: python -m tests.support.hostile_server --seed 1 --only tokens_nan
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiohttp import web

LEGAL, ILLEGAL, CUT, STATUS, DEADLINE, HUGE = "legal", "illegal", "cut", "status", "deadline", "huge"
CAP_S = 30.0  # no response lasts longer, whatever the client does
PING_EVERY_S, TOKEN_EVERY_S = 0.2, 0.01
MIB = 1 << 20
HUGE_LINE_MIB, HUGE_STREAM_MIB = 20, 100
RARE_REPEATS = 2  # DEADLINE and HUGE cases per label in a schedule: each may cost a whole deadline
PROMPT_RE = re.compile(r"fuzz case (\d+)\b")
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass
class Case:
    """One response being built: its label, its RNG, and what the mutation chose."""
    label: str
    rng: random.Random
    api: str
    tokens: int  # T of the base stream
    piece: str = " tok"
    writer: str = "one"  # "one" write, one write per byte, or "random" sizes of 1..64 bytes
    notes: list[str] = field(default_factory=list)
    resp: web.StreamResponse | None = None


@dataclass
class Expect:
    """What the server sent for one prompt, and what the client's row must say: a LEGAL row is
    ok with exactly `tokens` and `text`; any other row is an error."""
    prompt: str
    cls: str
    case: Case

    label = property(lambda self: self.case.label)
    tokens = property(lambda self: self.case.tokens)
    ok = property(lambda self: self.cls == LEGAL)
    # Read after the response is built (the body is built before its first byte is sent).
    text = property(lambda self: self.case.piece * self.case.tokens)
    detail = property(lambda self: f"T={self.case.tokens} writer={self.case.writer} {' '.join(self.case.notes)}")


# ---------------------------------------------------------------- the valid stream


def content(api: str, piece: str) -> dict:
    if api == "chat":
        return {"id": "x", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
    return {"id": "x", "object": "text_completion",
            "choices": [{"index": 0, "text": piece, "finish_reason": None}]}


def usage(tokens) -> dict:
    total = tokens + 5 if isinstance(tokens, int) and not isinstance(tokens, bool) else 5
    return {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": total}


def base_objects(case: Case) -> list:
    """T content chunks, a final chunk with finish_reason "length", then the usage chunk."""
    last = content(case.api, "")
    last["choices"][0]["finish_reason"] = "length"
    return [content(case.api, case.piece) for _ in range(case.tokens)] + [
        last, {"choices": [], "usage": usage(case.tokens)}]


def set_piece(obj: dict, api: str, value) -> None:
    if api == "chat":
        obj["choices"][0]["delta"] = {"content": value}
    else:
        obj["choices"][0]["text"] = value


def payload(obj) -> bytes:
    """An event's data: raw bytes as they are, else JSON (NaN and Infinity as Python writes them)."""
    return obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode()


@dataclass
class Framing:
    eol: bytes = b"\n"
    space: bool = True         # "data: x" or "data:x"
    split: bool = False        # a JSON data field over two data lines (joined with "\n")
    fields: bool = False       # event:, id:, retry: lines inside each event
    comments: bool = False     # ": comment" lines
    blank_lines: bool = False  # extra empty lines between events
    bom: bool = False          # a UTF-8 BOM before the first byte


def encode(objs: list, f: Framing, rng: random.Random, done: bool = True) -> bytes:
    events = [_event(payload(o), f, rng) for o in objs] + ([_event(b"[DONE]", f, rng)] if done else [])
    gap = (lambda: f.eol * rng.randint(1, 3)) if f.blank_lines else (lambda: b"")
    body = b"".join(e + gap() for e in events)
    return (b"\xef\xbb\xbf" if f.bom else b"") + body


def _event(data: bytes, f: Framing, rng: random.Random) -> bytes:
    parts = [data]
    if f.split and data.startswith(b"{") and b"," in data:
        k = data.index(b",") + 1
        parts = [data[:k], data[k:]]
    lines = [b"data:" + (b" " if f.space else b"") + p for p in parts]
    extras = [b"event: message", b"id: 7", b"retry: 1000"] if f.fields else []
    extras += [b": comment", b":"] if f.comments else []
    for extra in extras:
        lines.insert(rng.randint(0, len(lines)), extra)
    return f.eol.join(lines) + f.eol + f.eol


# ---------------------------------------------------------------- LEGAL: the row must be ok, with T and the text


def _framing(**kw) -> Callable[[Case, list, Framing], None]:
    def apply(case, objs, f):
        for k, v in kw.items():
            setattr(f, k, v)
    return apply


def _writer(name: str) -> Callable[[Case, list, Framing], None]:
    def apply(case, objs, f):
        case.writer = name
    return apply


def _unicode(case: Case, objs: list, f: Framing) -> None:
    # Multi-byte characters, which byte-sized writes split across reads.
    case.piece = " tök😀€"
    for o in objs[:case.tokens]:
        set_piece(o, case.api, case.piece)


def _extra_keys(case: Case, objs: list, f: Framing) -> None:
    for o in objs:
        o.update(x_unknown={"nested": [1, None, "s"]}, system_fingerprint="fp", created=1)
        for ch in o["choices"]:
            ch.update(logprobs=None, x_extra=1)
    objs[-1]["usage"]["x_details"] = {"cached_tokens": 0}


def _empty_choices(case: Case, objs: list, f: Framing) -> None:
    for _ in range(case.rng.randint(1, 3)):
        objs.insert(case.rng.randint(0, len(objs) - 1), {"id": "x", "object": "text_completion", "choices": []})


def _usage_null(case: Case, objs: list, f: Framing) -> None:
    for o in objs[:-1]:
        o.setdefault("usage", None)


def _continuous_usage(case: Case, objs: list, f: Framing) -> None:
    # Cumulative completion tokens on every content chunk (vLLM continuous_usage_stats).
    done = 0
    for o in objs[:-2]:
        done += _piece_of(o).count(case.piece)
        o["usage"] = usage(done)


def _choices_null(case: Case, objs: list, f: Framing) -> None:
    # `"choices": null` on the usage chunk: orch reads null as absent, as for any optional field.
    objs[-1]["choices"] = None


def _piece_of(obj: dict) -> str:
    ch = obj["choices"][0] if obj.get("choices") else {}
    return ch.get("text") or (ch.get("delta") or {}).get("content") or ""


def _multi_token(case: Case, objs: list, f: Framing) -> None:
    # Several tokens per chunk, as a speculative engine sends them; usage still says T.
    merged, left = [], case.tokens
    while left:
        n = case.rng.randint(1, left)
        merged.append(content(case.api, case.piece * n))
        left -= n
    objs[:case.tokens] = merged


# In the order legal_mix applies them: the piece first, chunks merged before usage is added to
# them, chunks without choices inserted last.
LEGAL_TRANSFORMS: dict[str, Callable[[Case, list, Framing], None]] = {
    "unicode": _unicode, "multi_token": _multi_token, "continuous_usage": _continuous_usage,
    "usage_null": _usage_null, "extra_keys": _extra_keys, "empty_choices": _empty_choices,
    "choices_null": _choices_null,
    "crlf": _framing(eol=b"\r\n"), "cr": _framing(eol=b"\r"), "split_data": _framing(split=True),
    "fields": _framing(fields=True), "comments": _framing(comments=True), "nospace": _framing(space=False),
    "blank_lines": _framing(blank_lines=True), "bom": _framing(bom=True),
    "one_write": _writer("one"), "byte_writes": _writer("bytes"), "random_writes": _writer("random"),
}


def legal_body(case: Case) -> bytes:
    name = case.label.removeprefix("legal_")
    if name == "mix":
        names = [n for n in LEGAL_TRANSFORMS if case.rng.random() < 0.35]
        names = [n for n in names if n != "cr"] if "crlf" in names else names
    else:
        names = [] if name == "plain" else [name]
    objs, f = base_objects(case), Framing()
    for n in names:
        LEGAL_TRANSFORMS[n](case, objs, f)
    case.notes.append("+".join(names) or "plain")
    return encode(objs, f, case.rng)


# ---------------------------------------------------------------- ILLEGAL: the row must be an error


def _insert(raw: bytes):
    def apply(case, objs):
        objs.insert(case.rng.randint(0, case.tokens), raw)
    return apply


def _chunk(key: str, value):
    def apply(case, objs):
        objs[case.rng.randrange(case.tokens)][key] = value
    return apply


def _choice(key: str, value):
    def apply(case, objs):
        objs[case.rng.randrange(case.tokens)]["choices"][0][key] = value
    return apply


def _piece(value):
    def apply(case, objs):
        set_piece(objs[case.rng.randrange(case.tokens)], case.api, value)
    return apply


def _usage(key: str, value):
    def apply(case, objs):
        objs[-1]["usage"][key] = value
    return apply


def _whole_usage(value):
    def apply(case, objs):
        objs[-1]["usage"] = value
    return apply


def _many_digits(case: Case, objs: list) -> None:
    # More digits than Python's int() takes from a string (4300): json.loads raises ValueError.
    objs[-1] = b'{"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": ' + b"9" * 5000 + b"}}"


def _timings_only(value):
    def apply(case, objs):
        objs[-1] = {"choices": [], "timings": {"predicted_n": value}}
    return apply


def _final_finish(value):
    def apply(case, objs):
        objs[-2]["choices"][0]["finish_reason"] = value
    return apply


NAN, INF = float("nan"), float("inf")
ILLEGAL_MUTATIONS: dict[str, Callable[[Case, list], None]] = {
    "data_null": _insert(b"null"), "data_true": _insert(b"true"), "data_number": _insert(b"42"),
    "data_string": _insert(b'"str"'), "data_list": _insert(b"[]"),
    "data_deep_nesting": _insert(b"[" * 100_000),  # json.loads raises RecursionError, not ValueError
    "json_cut": _insert(b'{"id": "x", "choices": [{"index": 0, "te'),
    "bad_utf8": _insert(b'{"choices": [{"index": 0, "text": "\xff\xfe\xfd", "finish_reason": null}]}'),
    "error_event": _insert(b'{"error": {"message": "injected", "type": "server_error", "code": 500}}'),
    "error_string": _insert(b'{"error": "overloaded"}'),
    "choices_number": _chunk("choices", 3), "choices_string": _chunk("choices", "abc"),
    "choices_object": _chunk("choices", {"index": 0, "text": " tok"}),
    "choice_number": _chunk("choices", [7]), "choice_string": _chunk("choices", [" tok"]),
    "choice_list": _chunk("choices", [[]]),
    "text_number": _piece(5), "text_object": _piece({"a": 1}), "text_list": _piece([" tok"]),
    "delta_number": _choice("delta", 5), "delta_string": _choice("delta", " tok"),
    "finish_reason_number": _final_finish(3),
    "usage_list": _whole_usage([5, 16]), "usage_string": _whole_usage("16 tokens"),
    "tokens_nan": _usage("completion_tokens", NAN), "tokens_inf": _usage("completion_tokens", INF),
    "tokens_neginf": _usage("completion_tokens", -INF), "tokens_negative": _usage("completion_tokens", -5),
    "tokens_fraction": _usage("completion_tokens", 3.5), "tokens_string": _usage("completion_tokens", "12"),
    "tokens_float_huge": _usage("completion_tokens", 1e30), "tokens_int_huge": _usage("completion_tokens", 10**30),
    "tokens_bool": _usage("completion_tokens", True), "tokens_null": _usage("completion_tokens", None),
    "tokens_many_digits": _many_digits,
    "prompt_tokens_string": _usage("prompt_tokens", "five"), "prompt_tokens_nan": _usage("prompt_tokens", NAN),
    "chunk_tokens_nan": _chunk("usage", {"prompt_tokens": 5, "completion_tokens": NAN}),
    "timings_list": _chunk("timings", [1, 2]),
    "timings_predicted_nan": _timings_only(NAN),
}


def illegal_body(case: Case) -> bytes:
    objs = base_objects(case)
    ILLEGAL_MUTATIONS[case.label](case, objs)
    return encode(objs, random_framing(case), case.rng)


def random_framing(case: Case) -> Framing:
    """Legal framing around an illegal or cut stream: the fault, not the framing, must decide."""
    f = Framing()
    for name in ("crlf", "cr", "split_data", "fields", "comments", "nospace", "blank_lines", "bom"):
        if case.rng.random() < 0.2:
            LEGAL_TRANSFORMS[name](case, [], f)
            case.notes.append(name)
    return f


# ---------------------------------------------------------------- sending


def _parts(body: bytes, writer: str, rng: random.Random) -> list[bytes]:
    if writer == "one":
        return [body]
    if writer == "bytes":
        return [body[i:i + 1] for i in range(len(body))]
    parts, i = [], 0
    while i < len(body):
        n = rng.randint(1, 64)
        parts.append(body[i:i + n])
        i += n
    return parts


async def open_stream(case: Case, request: web.Request, headers=SSE_HEADERS, length: int | None = None):
    resp = web.StreamResponse(headers=headers)
    if length is not None:
        resp.content_length = length
    case.resp = resp
    await resp.prepare(request)
    return resp


async def write(case: Case, resp: web.StreamResponse, body: bytes) -> None:
    for part in _parts(body, case.writer, case.rng):
        await resp.write(part)
        if case.writer != "one":
            await asyncio.sleep(0)  # let each write leave as its own segment


async def send_body(case: Case, request: web.Request, body: bytes, headers=SSE_HEADERS) -> web.StreamResponse:
    resp = await open_stream(case, request, headers)
    await write(case, resp, body)
    await resp.write_eof()
    return resp


def hang_up(request: web.Request) -> None:
    """Close the connection (after what is buffered): the response is cut, not ended."""
    if request.transport is not None:
        request.transport.close()


# ---------------------------------------------------------------- the other classes


async def cut(case: Case, request: web.Request) -> web.StreamResponse:
    """The valid stream, cut at a seeded byte offset: the connection closed (chunked, or short of
    its Content-Length), or the response ended cleanly but early. The cut always falls before
    the usage event's last byte: after that nothing a client needs is lost ([DONE] is a courtesy
    that a client may not insist on), so no client could call it an error."""
    objs = base_objects(case)
    body = encode(objs, random_framing(case), case.rng)
    tail = payload(objs[-1])[-12:]  # the usage event's end, even where its data spans two lines
    at = case.rng.randrange(body.rindex(tail) + len(tail) - 1)
    case.notes.append(f"at={at}/{len(body)}")
    mode = case.label.removeprefix("cut_")
    resp = await open_stream(case, request, length=len(body) if mode == "length" else None)
    await write(case, resp, body[:at])
    if mode == "eof":
        await resp.write_eof()
    else:
        hang_up(request)
    return resp


async def status(case: Case, request: web.Request) -> web.StreamResponse:
    """An HTTP error with a JSON body, an HTML page with 200, or a stream that lies about gzip."""
    kind = case.label
    if kind.startswith("http_"):
        code = int(kind[5:])
        headers = {"Retry-After": "1"} if code == 429 else None
        return web.json_response({"error": {"message": f"injected {code}", "code": code}}, status=code,
                                 headers=headers)
    if kind == "html_200":
        return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
    # gzip_garbage: says gzip, sends plain bytes; the client's decompressor must fail cleanly.
    body = encode(base_objects(case), Framing(), case.rng)
    return await send_body(case, request, body, headers={**SSE_HEADERS, "Content-Encoding": "gzip"})


async def ping_forever(case: Case, request: web.Request) -> web.StreamResponse:
    """Headers, then a comment every PING_EVERY_S: never idle, never done. Bounded by CAP_S."""
    resp = await open_stream(case, request)
    for _ in range(int(CAP_S / PING_EVERY_S)):
        await resp.write(b": ping\n\n")
        await asyncio.sleep(PING_EVERY_S)
    hang_up(request)
    return resp


async def tokens_forever(case: Case, request: web.Request) -> web.StreamResponse:
    """A token every TOKEN_EVERY_S, whatever max_tokens said. Bounded by CAP_S."""
    resp = await open_stream(case, request)
    event = encode([content(case.api, " tok")], Framing(), case.rng, done=False)
    for _ in range(int(CAP_S / TOKEN_EVERY_S)):
        await resp.write(event)
        await asyncio.sleep(TOKEN_EVERY_S)
    hang_up(request)
    return resp


@functools.cache
def _block(kind: str) -> bytes:
    """One MiB to repeat: the sending side stays cheap however much it sends."""
    if kind == "line":
        return b"a" * MIB
    event = encode([content("completions", " tok")], Framing(), random.Random(0), done=False)
    return event * (MIB // len(event))


async def huge_line(case: Case, request: web.Request) -> web.StreamResponse:
    """One data line of HUGE_LINE_MIB (valid JSON, one text field), then a valid end."""
    resp = await open_stream(case, request)
    await resp.write(b'data: {"id": "x", "object": "text_completion", "choices": [{"index": 0, "text": "')
    for _ in range(HUGE_LINE_MIB):
        await resp.write(_block("line"))
    await resp.write(b'", "finish_reason": null}]}\n\n')
    await resp.write(encode(base_objects(case), Framing(), case.rng))
    await resp.write_eof()
    return resp


async def huge_stream(case: Case, request: web.Request) -> web.StreamResponse:
    """HUGE_STREAM_MIB of valid token chunks as fast as the client takes them, then a valid end."""
    resp = await open_stream(case, request)
    block = _block("stream")
    for _ in range(HUGE_STREAM_MIB):
        await resp.write(block)
    sent = HUGE_STREAM_MIB * block.count(b"data:")
    last = content(case.api, "")
    last["choices"][0]["finish_reason"] = "length"
    await resp.write(encode([last, {"choices": [], "usage": usage(sent)}], Framing(), case.rng))
    await resp.write_eof()
    return resp


# ---------------------------------------------------------------- the label table


Send = Callable[[Case, web.Request], Awaitable[web.StreamResponse]]


def _body_sender(build: Callable[[Case], bytes]) -> Send:
    async def send(case, request):
        return await send_body(case, request, build(case))
    return send


LABELS: dict[str, tuple[str, Send]] = {
    **{f"legal_{n}": (LEGAL, _body_sender(legal_body)) for n in ["plain", "mix", *LEGAL_TRANSFORMS]},
    **{n: (ILLEGAL, _body_sender(illegal_body)) for n in ILLEGAL_MUTATIONS},
    **{f"cut_{m}": (CUT, cut) for m in ("close", "eof", "length")},
    **{n: (STATUS, status) for n in ("http_500", "http_429", "http_401", "html_200", "gzip_garbage")},
    "ping_forever": (DEADLINE, ping_forever), "tokens_forever": (DEADLINE, tokens_forever),
    "huge_line": (HUGE, huge_line), "huge_stream": (HUGE, huge_stream),
}
RARE = [n for n, (cls, _) in LABELS.items() if cls in (DEADLINE, HUGE)]
# A refusal of credentials ends the cell by design (the driver sends nothing more): one slot,
# the last, so that every other case is still sent.
FINAL = ["http_401"]
COMMON = [n for n in LABELS if n not in RARE and n not in FINAL]


def min_cases(per_label: int = 3) -> int:
    """Prompts needed for every common label to appear `per_label` times."""
    return per_label * len(COMMON) + RARE_REPEATS * len(RARE) + len(FINAL)


def schedule(seed: int, n: int) -> list[str]:
    """Labels for prompts "fuzz case 0".."fuzz case n-1": each rare label RARE_REPEATS times, the
    common ones round-robin over the rest (in a seeded order), all at seeded positions; the
    FINAL labels last."""
    if n < min_cases(1):
        return []
    rng = random.Random(f"schedule:{seed}")
    common = rng.sample(COMMON, len(COMMON))
    rare = RARE * RARE_REPEATS
    labels = rare + [common[i % len(common)] for i in range(n - len(rare) - len(FINAL))]
    rng.shuffle(labels)
    return labels + FINAL


# ---------------------------------------------------------------- the server


class HostileServer:
    """`with HostileServer(seed, n) as s:` serves on s.url; s.expects maps prompt text to Expect."""

    def __init__(self, seed: int = 0, n_cases: int = 0, only: str | None = None):
        if only is not None and only not in LABELS:
            raise ValueError(f"unknown label {only!r}")
        self.seed, self.only, self.plan = seed, only, schedule(seed, n_cases)
        self.expects: dict[str, Expect] = {}
        self.posts = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hostile-server", daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> "HostileServer":
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(15)
        except Exception:  # a stuck cleanup must not hide the test's own result; the thread is a daemon
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/health", _health)
        app.router.add_get("/v1/models", _models)
        app.router.add_post("/v1/completions", self._post)
        app.router.add_post("/v1/chat/completions", self._post)
        # shutdown_timeout bounds how long leaving the `with` waits for responses still sending.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return self._runner.addresses[0][1]

    def label_for(self, prompt: str) -> str:
        if self.only:
            return self.only
        m = PROMPT_RE.search(prompt)
        if m and int(m.group(1)) < len(self.plan):
            return self.plan[int(m.group(1))]
        return _rng(self.seed, "label", prompt).choice(COMMON)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        api = "chat" if request.path.endswith("/chat/completions") else "completions"
        prompt = _prompt_of(body, api)
        case = self._case(prompt, api, body)
        cls, send = LABELS[case.label]
        self.posts += 1
        self.expects[prompt] = Expect(prompt, cls, case)
        try:
            return await asyncio.wait_for(send(case, request), CAP_S + 5)
        except (ConnectionError, asyncio.TimeoutError):  # the client left, or the cap: hang up
            hang_up(request)
            return case.resp or web.Response(status=500)

    def _case(self, prompt: str, api: str, body: dict) -> Case:
        label = self.label_for(prompt)
        rng = _rng(self.seed, label, prompt)
        max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else 20
        tokens = rng.randint(1, max(1, min(20, max_tokens)))  # T never above what was asked
        writer = rng.choices(["one", "random", "bytes"], weights=[4, 4, 2])[0]
        return Case(label, rng, api, tokens, writer=writer)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "fuzz-model", "object": "model"}]})


def _rng(seed: int, *parts: str) -> random.Random:
    digest = hashlib.sha256("\0".join([str(seed), *parts]).encode()).digest()
    return random.Random(digest)


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _prompt_of(body: dict, api: str) -> str:
    if api == "chat":
        msgs = body.get("messages") or [{}]
        return str(msgs[-1].get("content", "")) if isinstance(msgs[-1], dict) else ""
    return str(body.get("prompt", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve hostile streams on 127.0.0.1 for a bounded time.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=min_cases())
    ap.add_argument("--only", choices=sorted(LABELS), default=None)
    ap.add_argument("--seconds", type=float, default=600, help="stop after this long (default 600)")
    args = ap.parse_args()
    with HostileServer(args.seed, args.cases, args.only) as server:
        print(server.url, flush=True)
        try:
            time.sleep(args.seconds)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
