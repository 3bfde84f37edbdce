"""The small requests orch makes beside the workload (readiness, /metrics, /props, /v1/models).

Each carries the engine's credentials and is bounded as a whole, headers and body, by one
deadline (aiohttp's total timeout: httpx's bounds each read, so a server that drips a byte
every few seconds could hold it for hours) and in size. A 401/403 raises AuthRefused: a
server that refuses orch's key is said so at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from yarl import URL

from orchestrator.common.errors import AuthRefused

LIMIT_BYTES = 8 << 20  # vLLM's /metrics is tens of KiB; a larger answer is not one orch can use


class ProbeFailed(Exception):
    """No usable answer: not reachable, not 200, too slow or too large. The message says which."""


def get(base_url: str, path: str, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0) -> bytes:
    """The body of GET base_url+path, or ProbeFailed; AuthRefused on 401/403."""
    status, body = asyncio.run(_get(base_url + path, headers, timeout_s, read=True))
    if status in AuthRefused.STATUSES:
        raise AuthRefused(path, status)
    if status != 200:
        raise ProbeFailed(f"HTTP {status}")
    return body


def status(url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 1.0) -> int | None:
    """The status of GET url, its body unread; None if there is no answer in time."""
    try:
        return asyncio.run(_get(url, headers, timeout_s, read=False))[0]
    except ProbeFailed:
        return None


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body if it is at most `limit` bytes, else None (reading stops just past it).
    One read returns only what has arrived, so read until the end or the limit."""
    body = await resp.content.read(limit + 1)
    while len(body) <= limit and not resp.content.at_eof():
        body += await resp.content.read(limit + 1 - len(body))
    return body if len(body) <= limit else None


async def _get(url: str, headers: Mapping[str, str] | None, timeout_s: float, read: bool) -> tuple[int, bytes]:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(URL(url, encoded=False), headers=headers, allow_redirects=False) as resp:
                if not read or resp.status != 200:
                    return resp.status, b""
                body = await read_capped(resp, LIMIT_BYTES)
                if body is None:
                    raise ProbeFailed(f"answer larger than {LIMIT_BYTES >> 20} MiB")
                return resp.status, body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ProbeFailed(type(exc).__name__) from None
