"""The small GETs orch makes beside the workload (/metrics, /props, /v1/models).

Each carries the engine's credentials, is bounded in time as a whole (httpx's timeout bounds
each read, so a server that drips a byte every few seconds would hold it for ever) and in size,
and turns a 401/403 into AuthRefused: a server that refuses orch's key is said so at once.
"""

from __future__ import annotations

import time

import httpx

from .errors import AuthRefused

LIMIT_BYTES = 8 << 20  # vLLM's /metrics is tens of KiB; a larger answer is not one orch can use


class ProbeFailed(Exception):
    """No usable answer: not reachable, not 200, too slow or too large. The message says which."""


def get(base_url: str, path: str, headers: dict | None = None, timeout_s: float = 5.0) -> bytes:
    """The body of GET base_url+path, or ProbeFailed; AuthRefused on 401/403."""
    deadline = time.monotonic() + timeout_s
    try:
        with httpx.stream("GET", base_url + path, headers=headers, timeout=timeout_s) as resp:
            if resp.status_code in (401, 403):
                raise AuthRefused(path, resp.status_code)
            if resp.status_code != 200:
                raise ProbeFailed(f"HTTP {resp.status_code}")
            return _read(resp, deadline)
    except httpx.HTTPError as exc:
        raise ProbeFailed(type(exc).__name__) from None


def _read(resp: httpx.Response, deadline: float) -> bytes:
    body = bytearray()
    for chunk in resp.iter_bytes():
        body += chunk
        if len(body) > LIMIT_BYTES:
            raise ProbeFailed(f"answer larger than {LIMIT_BYTES >> 20} MiB")
        if time.monotonic() > deadline:
            raise ProbeFailed("answer still arriving at the deadline")
    return bytes(body)
