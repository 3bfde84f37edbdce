"""A synthetic OpenAI-compatible streaming server whose truth is known: every stream emits its
tokens at a fixed rate, k tokens per SSE chunk, and reports exact usage.

Token j of a request (0-based) is due (j + 1) / rate seconds after the request arrives (its bytes
were read off the socket, not when its handler got to run: 256 requests landing together wait
up to ~20 ms for this one-core server's handlers, and that wait is the server's); a chunk
goes out when its last token is due, against absolute deadlines, so lateness never accumulates.
A request for N tokens therefore lasts N / rate seconds on the server: the true end-to-end rate
is `rate`. The server measures how late its own sends were (GET /stats) so a run where the
server, not the client, fell behind is caught.

    python benchmarks/synthetic_server.py --port 8765 --rate 50 --chunk-tokens 1 [--cpu 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from aiohttp import web, web_server
from aiohttp.web_protocol import RequestHandler

WORD = "tok "  # one token of text; the tokenizer never matters, usage says how many


class Stats:
    def __init__(self):
        self.reset()

    def reset(self):
        self.requests = self.chunks = self.tokens = 0
        self.max_late_s = 0.0
        self.late_sum_s = 0.0
        self.spans: list[tuple] = []  # per request: (body's "user", handler start, last write), monotonic

    def as_dict(self) -> dict:
        return {"requests": self.requests, "chunks": self.chunks, "tokens": self.tokens,
                "max_late_ms": 1000 * self.max_late_s,
                "mean_late_ms": 1000 * self.late_sum_s / self.chunks if self.chunks else 0.0}


class StampedHandler(RequestHandler):
    """aiohttp's connection protocol, noting when the connection's last bytes arrived."""
    __slots__ = ("arrived",)

    def data_received(self, data: bytes) -> None:
        self.arrived = time.monotonic()
        super().data_received(data)


web_server.RequestHandler = StampedHandler  # the class aiohttp's server builds per connection


class Synthetic:
    """The server's handlers, and the stats they keep."""

    def __init__(self, rate: float, chunk_tokens: int):
        self.rate, self.chunk_tokens, self.stats = rate, chunk_tokens, Stats()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        t0 = request.protocol.arrived
        body = await request.json()
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        chat = request.path.endswith("/chat/completions")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        base = {"id": "synthetic", "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": body.get("model", "synthetic")}
        await self._paced(resp, t0, n, chat, base)
        usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": n + 8}
        await resp.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        self.stats.spans.append((body.get("user"), t0, time.monotonic()))
        self.stats.requests += 1
        self.stats.tokens += n
        return resp

    async def _paced(self, resp: web.StreamResponse, t0: float, n: int, chat: bool, base: dict) -> None:
        """n tokens in chunks, each sent when its last token is due (absolute deadlines from t0)."""
        def event(k: int, last: bool) -> bytes:
            text, reason = WORD * k, "length" if last else None
            choice = ({"index": 0, "delta": {"content": text}, "finish_reason": reason} if chat
                      else {"index": 0, "text": text, "finish_reason": reason})
            return b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

        full, sent, stats = event(self.chunk_tokens, False), 0, self.stats  # encoded once: a send's cost delays every stream
        while sent < n:
            k = min(self.chunk_tokens, n - sent)
            due = t0 + (sent + k) / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            late = time.monotonic() - due
            stats.max_late_s = max(stats.max_late_s, late)
            stats.late_sum_s += max(late, 0.0)
            sent += k
            await resp.write(full if k == self.chunk_tokens and sent < n else event(k, sent == n))
            stats.chunks += 1

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "synthetic", "object": "model"}]})

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def get_stats(self, request: web.Request) -> web.Response:
        out = self.stats.as_dict()
        if request.query.get("spans"):
            out["spans"] = self.stats.spans
        if request.query.get("reset"):
            self.stats.reset()
        return web.json_response(out)


def make_app(rate: float, chunk_tokens: int) -> web.Application:
    server = Synthetic(rate, chunk_tokens)
    app = web.Application()
    app.router.add_post("/v1/completions", server.completions)
    app.router.add_post("/v1/chat/completions", server.completions)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/health", server.health)
    app.router.add_get("/stats", server.get_stats)
    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--rate", type=float, default=50.0, help="tokens/s per stream")
    ap.add_argument("--chunk-tokens", type=int, default=1, help="tokens per SSE chunk (1-8)")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    web.run_app(make_app(args.rate, args.chunk_tokens), host="127.0.0.1", port=args.port, print=None,
                access_log=None, backlog=1024)


if __name__ == "__main__":
    main()
