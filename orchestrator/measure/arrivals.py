"""Open-loop arrivals: requests sent on a schedule drawn in advance, whatever the server does.

A closed loop (driver.run_batch) sends the next request when a stream frees up, so a slow
server is sent less; production traffic does not wait. Here each request has a due time, drawn
from gamma inter-arrival times with mean 1/rate (shape `burstiness`: 1 is a Poisson process,
below 1 burstier, above 1 steadier; `vllm bench serve --burstiness` draws them the same way)
from the scenario's seed, so two runs send the same schedule. A cap on requests in flight
bounds what the client holds open: a request due while the cap is reached waits for a free
stream, and its lateness against its due time is recorded (`send_late_s`), never hidden.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from engines.base import StreamCounts
from orchestrator.measure.driver import (ENDPOINTS, RequestSpec, measure_one, no_gc_pauses, open_connection, refused,
                                         session_for, spec_fields, typed)
from orchestrator.types.records import Measured


def arrival_offsets(rate: float, n: int, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds after the start at which each of `n` requests is due: the first at 0, then gaps
    drawn from Gamma(shape=burstiness, scale=1 / (rate * burstiness)), whose mean is 1/rate."""
    if not (rate > 0 and burstiness > 0) or n < 0:
        raise ValueError(f"rate {rate} and burstiness {burstiness} must be above 0, n {n} at least 0")
    gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=max(n - 1, 0))
    return [0.0, *np.cumsum(gaps).tolist()][:n]


async def run_open_loop(base_url: str, api: str, specs: list[RequestSpec], offsets: list[float], max_in_flight: int,
                        make_body: Callable[[RequestSpec], dict], timeout_s: float,
                        on_record: Callable[[Measured], None], headers: dict | None = None,
                        counts: StreamCounts | None = None, tokenize_path: str | None = None,
                        open_session: Callable[..., aiohttp.ClientSession] | None = None,
                        redirects: str = "same-host") -> list[Measured]:
    """Send specs[i] at offsets[i] seconds after the start, at most `max_in_flight` at once, each
    on a connection opened before the clock starts; call on_record as each ends. As in run_batch,
    a refusal of orch's credentials sends nothing more."""
    if len(offsets) != len(specs):
        raise ValueError(f"{len(specs)} requests but {len(offsets)} due times")
    streams = min(max_in_flight, len(specs))
    if not streams:
        return []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
    connect = functools.partial(open_session or session_for, timeout, ssl.create_default_context(), headers)
    base = base_url.rstrip("/")
    loop = _Loop(base + ENDPOINTS[api], make_body, timeout_s, on_record, counts, redirects,
                 base + tokenize_path if tokenize_path else None)
    sessions = [connect() for _ in range(streams)]
    try:
        await asyncio.gather(*(open_connection(s, base) for s in sessions))
        for s in sessions:
            loop.free.put_nowait(s)
        with no_gc_pauses():
            await loop.send_all(specs, offsets)
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return loop.records


@dataclass
class _Loop:
    """The schedule's sender: a pool of open connections, the requests in flight, their records."""

    url: str
    make_body: Callable[[RequestSpec], dict]
    timeout_s: float
    on_record: Callable[[Measured], None]
    counts: StreamCounts | None
    redirects: str
    tokenize_url: str | None
    free: asyncio.Queue[aiohttp.ClientSession] = field(default_factory=asyncio.Queue)
    records: list[Measured] = field(default_factory=list)
    stopped: bool = False  # the server refused orch's credentials

    async def send_all(self, specs: list[RequestSpec], offsets: list[float]) -> None:
        t0 = time.perf_counter()
        flying = []
        for spec, offset in zip(specs, offsets, strict=True):
            due = t0 + offset
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            session = await self.free.get()  # the cap: a request due while every stream is busy waits here
            if self.stopped:
                self.free.put_nowait(session)
                break
            late = max(0.0, time.perf_counter() - due)  # the loop may wake a hair early: never negative
            flying.append(asyncio.create_task(self._one(session, spec, late)))
        await asyncio.gather(*flying)

    async def _one(self, session: aiohttp.ClientSession, spec: RequestSpec, late: float) -> None:
        try:
            rec = await measure_one(session, self.url, self.make_body(spec), self.timeout_s, self.counts,
                                    self.redirects, self.tokenize_url)
        finally:
            self.free.put_nowait(session)
        self.stopped = self.stopped or refused(rec)
        measured = typed({**rec, **spec_fields(spec), "send_late_s": round(late, 6)})
        self.records.append(measured)
        self.on_record(measured)
