"""Sampling through one measured window, off the request path.

A `Sampler` is a context manager around the window: a daemon thread reads every source each
`interval_s` (perf_counter time, the driver's clock) and keeps the samples in memory; nothing is
written while requests run. The thread's own CPU time is measured (`time.thread_time`) so that
its cost is stated with the figures it produced (benchmarks/telemetry_overhead.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from orchestrator.telemetry.sources import Unavailable


@dataclass
class Samples:
    """What one window's sampling produced: time-stamped readings and what could not be read."""

    interval_s: float
    sources: list[str]
    rows: list[dict] = field(default_factory=list)  # {"t": perf_counter s, "<field>": value, ...}
    missing: dict[str, str] = field(default_factory=dict)  # source -> why (first reason seen)
    sampler_cpu_s: float = 0.0

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """(times, values) of one field, over the samples that have it."""
        pts = [(r["t"], r[name]) for r in self.rows if name in r]
        return [t for t, _ in pts], [v for _, v in pts]

    def fields(self) -> set[str]:
        return {k for r in self.rows for k in r if k != "t"}


class Sampler:
    def __init__(self, sources: list, interval_s: float = 0.1, clock=time.perf_counter):
        self.sources, self.interval_s, self.clock = sources, interval_s, clock
        self.samples = Samples(interval_s, [s.name for s in sources])
        for s in sources:
            if s.unavailable:
                self.samples.missing.setdefault(s.name, s.unavailable)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="orch-telemetry")

    def __enter__(self) -> Samples:
        self._tick()  # the window's first sample before any request goes out
        self._thread.start()
        return self.samples

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5 + 2 * self.interval_s)
        self._tick()  # and the last after every request of the window ended

    def _loop(self) -> None:
        start = time.thread_time()
        next_at = self.clock() + self.interval_s
        while not self._stop.wait(max(0.0, next_at - self.clock())):
            self._tick()
            next_at += self.interval_s
            if next_at < self.clock():  # a stall (suspend, a slow read): skip, never catch up in a burst
                next_at = self.clock() + self.interval_s
        self.samples.sampler_cpu_s += time.thread_time() - start

    def _tick(self) -> None:
        row = {"t": self.clock()}
        for s in self.sources:  # a source that cannot be read raises Unavailable, with its reason
            try:
                row.update(s.read())
                if getattr(s, "partial", None):  # fields this source could not read this time
                    self.samples.missing.setdefault(f"{s.name} fields", "; ".join(s.partial)[:300])
            except Unavailable as exc:
                self.samples.missing.setdefault(s.name, str(exc))
            except Exception as exc:  # noqa: BLE001 - a source's own failure costs its readings, never the window
                self.samples.missing.setdefault(s.name, f"read failed: {type(exc).__name__}: {str(exc)[:120]}")
        self.samples.rows.append(row)
