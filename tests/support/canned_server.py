"""A real HTTP server on loopback, in the test's own event loop, answering with whatever a test's
handler returns: for driver tests that need exact bytes on the wire (aiohttp's TestServer)."""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def serve(handler: Handler, client: Callable[[str], Awaitable]) -> object:
    """Run `client(base_url)` against a server that answers every path with `handler`."""
    async def go():
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        async with TestServer(app) as server:
            return await client(str(server.make_url("")).rstrip("/"))
    return asyncio.run(go())


def sse(*objs, done=True) -> bytes:
    out = "".join(f"data: {json.dumps(o)}\n\n" for o in objs)
    return (out + ("data: [DONE]\n\n" if done else "")).encode()


def event_stream(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="text/event-stream")


def answer(response: Callable[[], web.StreamResponse]) -> Handler:
    """A handler that answers every request with a fresh copy of one response."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return response()
    return handler
