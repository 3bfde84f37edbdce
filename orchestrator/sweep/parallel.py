"""Cells side by side: one per device of this host (threads here), or one per Ray task
(sweep/cluster.py, which uses the same Relay and Writer).

A running cell writes through a Relay: its records and words become Events on one queue. The
sweep's main thread (the Writer) is the only one that touches the run folder and the display, so
every file gets whole lines in one order, and each cell record gets its placement: where the cell
ran and which cells' servers ran on the same host at some time during it.

Ctrl-C (or SIGTERM) in the main thread kills every running server from there; each cell's thread
then finds its server gone and ends. Those cells are recorded as interrupted, and the requests
that failed because orch killed their server are not written as measurements (they measured the
kill, not the server); `--resume` runs those cells again.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.types.records import CellPlacement, CellRecord, RequestRecord
from orchestrator.results.rundir import RunDir
from orchestrator.sweep.placement import Device, host_name

DRAIN_S = 60.0  # after Ctrl-C: how long the cells' threads get to end once their servers are killed
LOG_CAP = 8 * 2**20  # bytes of a remote cell's server.log brought back (its tail)


@dataclass
class Event:
    """One thing a running cell reports: kind is started, request, samples, cell, warn, log,
    environment, lost (its Ray node or task died) or done."""

    kind: str
    cell_id: str
    data: Any = None
    extra: Any = None


class Relay:
    """runner.Output's methods for a cell that runs beside others: each call becomes an Event."""

    def __init__(self, events: "queue.Queue[Event]", cell_dir: Callable[[str], Path],
                 stopped: threading.Event | None = None):
        self.events, self._cell_dir = events, cell_dir
        self.stopped = stopped or threading.Event()  # set by Ctrl-C in the main thread
        self.server = None

    def cell_dir(self, cell_id: str) -> Path:
        return self._cell_dir(cell_id)

    def request(self, rec: RequestRecord) -> None:
        self.events.put(Event("request", rec.cell_id, rec))

    def samples(self, cell_id: str, concurrency: int, rows: list[dict]) -> None:
        self.events.put(Event("samples", cell_id, rows, concurrency))

    def cell(self, rec: CellRecord) -> None:
        self.events.put(Event("cell", rec.cell_id, rec))

    def phase(self, text: str) -> None:
        pass  # side by side, each cell's phases would interleave into noise; starts and ends are said

    def warn(self, text: str) -> None:
        self.events.put(Event("warn", "", text))

    def serving(self, cell_id: str, server) -> None:
        self.server = server
        if self.stopped.is_set():  # Ctrl-C came while this server was starting: it goes at once
            server.stop_from_elsewhere()

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop_from_elsewhere()


@dataclass
class _Span:
    host: str
    start: float
    end: float | None = None


@dataclass
class Writer:
    """The one writer of a parallel sweep's run folder (and its display), fed Events."""

    run: RunDir
    progress: Any  # progress.ParallelProgress
    total: int
    records: list[CellRecord] = field(default_factory=list)
    spans: dict[str, _Span] = field(default_factory=dict)
    placements: dict[str, CellPlacement] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)
    interrupted: bool = False
    before: dict[tuple[str, int], set[str]] = field(default_factory=dict, init=False)  # where each start ran before a resume

    def __post_init__(self):
        """Where the measurements a resumed cell keeps were made (only cells that kept some)."""
        kept = {(r.cell_id, r.block or 0) for r in self.run.request_records() if r.phase == "measured" and r.ok}
        for rec in self.run.cell_records():
            start = (rec.cell_id, rec.block or 0)  # another block's start is another start, not this one's past
            if rec.placement is not None and start in kept:
                self.before[start] = {_where(rec.placement), *rec.placement.earlier}

    def apply(self, ev: Event) -> None:
        getattr(self, f"_{ev.kind}")(ev)

    def _started(self, ev: Event) -> None:
        place: CellPlacement = ev.data
        self.placements[ev.cell_id] = place
        self.spans[ev.cell_id] = _Span(place.host or "?", ev.extra)
        self.progress.cell_started(ev.cell_id, place.node, place.device, len(self.spans), self.total)

    def _request(self, ev: Event) -> None:
        if self.interrupted and not ev.data.ok:
            return  # failed because orch killed its server on Ctrl-C: not a measurement
        self.run.append_request(ev.data)
        self.progress.request_done(ev.data)

    def _samples(self, ev: Event) -> None:
        self.run.append_samples(ev.cell_id, ev.extra, ev.data)

    def _warn(self, ev: Event) -> None:
        self.progress.warn(ev.data)

    def _log(self, ev: Event) -> None:
        self.run.write_server_log(ev.cell_id, ev.data.decode(errors="replace"), ev.extra or "server.log")

    def _environment(self, ev: Event) -> None:
        node = ev.extra
        if node not in self.nodes:
            self.nodes.add(node)
            self.run.write_node_environment(node, ev.data)

    def _cell(self, ev: Event) -> None:
        rec: CellRecord = ev.data
        if any(r.cell_id == rec.cell_id for r in self.records):
            return  # a dying Ray task's last put, read after the cell was already recorded as lost
        span = self.spans.get(rec.cell_id)
        if span is not None:
            span.end = (rec.started_at or span.start) + (rec.seconds or 0.0)
            place = self.placements[rec.cell_id]
            place.beside = self.beside(rec.cell_id)
            place.earlier = sorted(self.before.get((rec.cell_id, rec.block or 0), set()) - {_where(place)})
            rec.set(placement=place)
        if self.interrupted and rec.status != "ok":
            rec.set(status="interrupted", error="interrupted")
        self.run.append_cell(rec)
        self.records.append(rec)
        self.progress.cell_finished(rec.cell_id, rec.status, rec.error or rec.prompt_check or "", rec.seconds)

    def _lost(self, ev: Event) -> None:
        """The cell's Ray task or node died before it could write its own record (one that did
        write it is recorded once: _cell skips a second)."""
        cell = ev.data  # runner.Cell
        started = self.spans[ev.cell_id].start if ev.cell_id in self.spans else time.time()
        rec = CellRecord(cell_id=cell.id, engine=cell.engine.name, kind=cell.engine.kind,
                         launcher=cell.engine.launcher, method=cell.method, n_spec=cell.n_spec,
                         status="interrupted" if self.interrupted else "failed", error=ev.extra,
                         started_at=round(started, 3), seconds=round(max(0.0, time.time() - started), 3))
        self._cell(Event("cell", cell.id, rec))

    def beside(self, cell_id: str) -> list[str]:
        """Cells whose servers ran on the same host at some time during this one."""
        me = self.spans[cell_id]
        return sorted(c for c, s in self.spans.items() if c != cell_id and s.host == me.host
                      and s.start < (me.end or time.time()) and (s.end is None or s.end > me.start))


def _where(place: CellPlacement) -> str:
    """The machine and device, not the Ray node: a cluster restarted between an interrupt and the
    resume gives the same machine a new node id."""
    return f"{place.host or place.node or '?'}, {place.device or 'any'}"


def run_on_devices(sweep, run: RunDir, devices: list[Device], progress) -> list[CellRecord]:
    """Every cell not yet done in `run`, one per device at a time, on this host. Blocks
    (workload.blocks) run one after another, so that drift still lands between them; the cells of
    one block run side by side."""
    records: list[CellRecord] = []
    for block in range(sweep.workload.blocks):
        records += _run_block(sweep, run, devices, progress, block)
    return records


def _run_block(sweep, run: RunDir, devices: list[Device], progress, block: int) -> list[CellRecord]:
    """One block's cells: a thread per device takes the next cell. Daemon threads: after Ctrl-C, a
    cell still stuck past the drain (a server that ignores its kill) does not hold orch's exit."""
    jobs = sweep.cells_to_run(run, block)
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    events: queue.Queue[Event] = queue.Queue()
    relays: dict[str, Relay] = {}
    stop = threading.Event()
    host = host_name()

    def one(device: Device, cell, remaining) -> None:
        try:
            relay = relays[cell.id] = Relay(events, run.cell_dir, stop)
            place = CellPlacement(node=host, host=host, device=device.name, gpus=_ids(device.gpus),
                                  cores=_ids(device.cores))
            events.put(Event("started", cell.id, place, time.time()))
            sweep.run_cell(cell, remaining, relay, device, place)
        except BaseException as exc:  # noqa: BLE001 - run_cell records a cell's own failures; this is orch's
            events.put(Event("lost", cell.id, cell, f"internal error: {type(exc).__name__}: {exc}"))

    def worker(device: Device) -> None:
        while True:
            try:
                cell, remaining = todo.get_nowait()
            except queue.Empty:
                return
            if not stop.is_set():  # after Ctrl-C a cell not begun is not begun: nothing of it ran
                one(device, cell, remaining)
            events.put(Event("done", cell.id))

    writer = Writer(run, progress, len(jobs))  # reads the run's records: before any cell starts
    for d in devices:
        threading.Thread(target=worker, args=(d,), name=f"orch-cell {d.name}", daemon=True).start()
    pump(events, writer, len(jobs), lambda: _stop_all(stop, relays))
    return writer.records


def _stop_all(stop: threading.Event, relays: dict[str, Relay]) -> None:
    stop.set()
    for relay in list(relays.values()):
        relay.stop_server()


def pump(events: "queue.Queue[Event]", writer: Writer, jobs: int, on_interrupt: Callable[[], None]) -> None:
    """Write events until every job has said done. On Ctrl-C, stop the cells, write what they
    still report (within DRAIN_S), and raise the interrupt again; on an error of the writer's own
    (the disk is full), stop the cells, let them end (within DRAIN_S, so that each removes its
    server), and raise it: nothing more could be written."""
    pending = jobs
    try:
        while pending:
            pending -= _one(events, writer)
    except BaseException as exc:
        writer.interrupted = True
        on_interrupt()
        still = writer if isinstance(exc, KeyboardInterrupt) else None  # a writer that failed writes no more
        deadline = time.monotonic() + DRAIN_S
        while pending and time.monotonic() < deadline:
            pending -= _one(events, still)
        raise


def _one(events: "queue.Queue[Event]", writer: Writer | None) -> int:
    """Apply one event (None: drop it); 1 if it was a job's last."""
    try:
        ev = events.get(timeout=0.5)  # a timeout, so that Ctrl-C is seen at once
    except queue.Empty:
        return 0
    if ev.kind == "done":
        return 1
    if writer is not None:
        writer.apply(ev)
    return 0


def _ids(ids: tuple[int, ...] | None) -> list[int] | None:
    return list(ids) if ids is not None else None
