"""Cells as Ray tasks: `[placement] cluster = "auto"` (or `orch sweep --cluster ADDRESS`).

Each cell is one Ray generator task that asks for one device: one GPU (`num_gpus=1`; Ray sets
CUDA_VISIBLE_DEVICES), or one of the custom resource that CPU nodes declare
(`placement.resource`). On its node the task resolves the engine and model, starts the server,
drives the workload from that same node over loopback (so the network between nodes is never
measured), and yields each record as it is written; this process writes them into the one run
folder through sweep/parallel.py's Writer, as a sweep on one host does. A node may declare the
cores its device has in ORCH_CORES when it is started (docs/clusters.md): the server is pinned
to them with as many threads.

Failures are data: a node or worker that dies mid-cell ends that cell as a failed record (its
requests so far are kept) and the other cells go on; a task is never retried, since a second
start on another node would measure something else under the same cell. Ctrl-C cancels the
tasks: their workers are killed, and with them their servers (a process started by orch dies
with its parent), and containers left by the run are removed from every node's Docker.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from orchestrator.common.errors import OrchError, ScenarioError
from orchestrator.common.show import printable
from orchestrator.measure.driver import RequestSpec
from orchestrator.measure.prompts import Prompt
from orchestrator.types.records import CellPlacement, CellRecord
from orchestrator.results.rundir import RunDir
from orchestrator.sweep.environment import capture
from orchestrator.sweep.parallel import LOG_CAP, Event, Relay, Writer, pump
from orchestrator.sweep.placement import node_device
from orchestrator.sweep.runner import Cell, Sweep, engine_env
from orchestrator.types.scenario import PlacementSettings, Scenario

T = TypeVar("T")

NEEDS_RAY = "placement.cluster needs Ray: pip install 'orch[cluster]' (or pip install 'ray[client]')"


@dataclass
class CellJob:
    """What a cell's task carries to its node: everything but the binaries and the model files,
    which the node resolves itself."""

    scenario: Scenario
    base_dir: str
    prompts: list[Prompt]
    run_name: str
    cell: Cell
    todo: list[RequestSpec]


# Ray Client's proxy forks one server per client while its gRPC threads run; the child dies in a
# few percent of starts (ray-project/ray#63202, open), which a new connection gets past.
CLIENT_TRIES = 3


def connect(address: str):
    """Ray, connected to the cluster at `address`; one line if it cannot be."""
    try:
        import ray
    except ImportError:
        raise OrchError(NEEDS_RAY) from None
    problem = unreachable(address)
    if problem:
        raise OrchError(f"no Ray cluster at {address!r}: {problem}; start one with `ray start --head` "
                        "(docs/clusters.md) or fix placement.cluster")
    for attempt in range(1, CLIENT_TRIES + 1):
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, ignore_reinit_error=True)
            return ray
        except ConnectionAbortedError as exc:  # Ray Client: the server it forks for this client died at birth
            if attempt == CLIENT_TRIES:
                raise OrchError(f"Ray Client at {address!r} could not start a server for orch in {CLIENT_TRIES} "
                                f"tries ({_line(exc, last=True)}); see ray_client_server*.err in the head's Ray logs, "
                                "or use the GCS address HEAD:6379 from a machine of the cluster") from exc
            _shutdown(ray)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise OrchError(f"no Ray cluster at {address!r}: {_line(exc)}; start one with "
                            "`ray start --head` (docs/clusters.md) or fix placement.cluster") from exc


def _line(exc: BaseException, last: bool = False, cap: int = 200) -> str:
    """The first non-empty line of an exception's text, or the last (the cause at the end of a
    traceback Ray passes on as text); its type's name where it has no text."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1 if last else 0] if lines else type(exc).__name__)[:cap]


def _shutdown(ray) -> None:
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - a connection that never came up has nothing to shut
        pass


CONNECT_S = 5.0  # Ray itself retries an unreachable GCS for minutes


def unreachable(address: str) -> str | None:
    """Why nothing answers at a HOST:PORT or ray://HOST:PORT address, or None ("auto" is Ray's to find)."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S) as conn:
            said = _http2_answer(conn)
    except (OSError, ValueError) as exc:
        return f"nothing answers at {host}:{port} within {CONNECT_S:.0f} s ({getattr(exc, 'strerror', None) or exc})"
    if said is not None:
        return f"what answers at {host}:{port} is not a Ray server (it said {said!r})"
    return None


# HTTP/2's connection preface and an empty SETTINGS frame: what every gRPC client sends first.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _http2_answer(conn: socket.socket) -> str | None:
    """None if the server answers as gRPC does (Ray's GCS and Ray Client both are gRPC servers):
    an HTTP/2 SETTINGS frame first. Else what it said instead, shortened: a web server's 400, or
    nothing. Ray's own client would retry such an address for a minute, printing as it goes."""
    conn.sendall(_PREFACE)
    got = b""
    try:
        while len(got) < 9:
            part = conn.recv(9 - len(got))
            if not part:
                break
            got += part
    except TimeoutError:
        pass
    if len(got) == 9 and got[3] == 4:  # a frame header whose type is SETTINGS
        return None
    try:
        got += conn.recv(200) if got else b""  # enough of it to show what answered
    except OSError:
        pass
    return printable(got.decode(errors="replace").strip().splitlines()[0][:60]) if got.strip() else "nothing"


def check_offered(ray, placed: PlacementSettings) -> None:
    """One line, before any run folder, if no node of the cluster offers what a cell asks for:
    Ray would keep such tasks pending for ever, in silence."""
    offered = ray.cluster_resources()
    wanted = placed.resource or "GPU"
    if offered.get(wanted, 0) >= 1:
        return
    have = sorted(k for k in offered if not k.startswith(("node:", "accelerator_type:")))
    fix = ("fix placement.resource, or start the nodes with --resources '{\"%s\": 1}'" % wanted if placed.resource
           else "on CPU nodes set placement.resource to the resource they declare (docs/clusters.md)")
    fix += "; an autoscaling cluster needs one such node up first (min_workers = 1)"
    raise ScenarioError(f"the Ray cluster at {placed.cluster}", "placement.resource",
                        f"no node offers one {wanted!r} (its resources: {', '.join(have)}); {fix}")


def node_name(node_id: str, host: str) -> str:
    """A Ray node as records name it: its host and the start of its node id (two nodes may share a host)."""
    return f"{host}-{node_id[:8]}"


def _asks(placed: PlacementSettings) -> dict:
    """The task's resources: the device and nothing else (the node's CPUs are the device's business)."""
    if placed.resource:
        return {"num_cpus": 0, "resources": {placed.resource: 1}}
    return {"num_cpus": 0, "num_gpus": 1}


def run_on_cluster(ray, sweep: Sweep, run: RunDir, placed: PlacementSettings, progress) -> list[CellRecord]:
    """Every cell not yet done in `run`, as Ray tasks (`ray`: connected by `connect`); Ray starts
    each when a device is free. However it ends, no task of it is left running, and after an
    interrupt or an error no container of the run is left on any node."""
    records: list[CellRecord] = []
    try:
        for block in range(sweep.workload.blocks):  # blocks one after another, a block's cells side by side
            records += _run_block(ray, sweep, run, placed, progress, block)
    finally:
        ray.shutdown()
    return records


def _run_block(ray, sweep: Sweep, run: RunDir, placed: PlacementSettings, progress, block: int) -> list[CellRecord]:
    events: queue.Queue[Event] = queue.Queue()
    jobs = sweep.cells_to_run(run, block)
    tasks: dict[str, object] = {}
    writer = Writer(run, progress, len(jobs))
    try:
        assert placed.cluster is not None  # run_on_cluster is chosen only for a scenario with placement.cluster
        submit = _submit_with_mailbox if placed.cluster.startswith("ray://") else _submit_streamed
        submit(ray, [CellJob(sweep.scenario, str(sweep.base_dir), sweep.prompts, run.path.name, cell, todo)
                     for cell, todo in jobs], _asks(placed), tasks, events)
        pump(events, writer, len(jobs), lambda: _cancel(ray, tasks))
    except BaseException:  # Ctrl-C (also while submitting), or a write that failed: after pump's drain
        _cancel(ray, tasks)
        _remove_left(ray, run.path.name)
        raise
    return writer.records


def _options(cell: Cell, asks: dict) -> dict:
    return dict(name=f"orch {cell.id}", max_retries=0, retry_exceptions=False, **asks)


def _submit_streamed(ray, jobs: list[CellJob], asks: dict, tasks: dict, events: "queue.Queue[Event]") -> None:
    """One generator task per cell, and a thread that follows its yields."""
    for job in jobs:
        tasks[job.cell.id] = ray.remote(cell_task).options(**_options(job.cell, asks)).remote(job)
        threading.Thread(target=_follow, args=(ray, tasks[job.cell.id], job.cell, events), daemon=True).start()


def _follow(ray, task, cell: Cell, events: "queue.Queue[Event]") -> None:
    """One cell's stream of events, into the writer's queue; a task that dies is a lost cell."""
    try:
        for ref in task:
            events.put(ray.get(ref))
    except Exception as exc:  # noqa: BLE001 - ray.exceptions.*: a node or worker died, the task was cancelled
        events.put(Event("lost", cell.id, cell, lost_text(exc)))
    finally:
        events.put(Event("done", cell.id))


def _submit_with_mailbox(ray, jobs: list[CellJob], asks: dict, tasks: dict, events: "queue.Queue[Event]") -> None:
    """Ray Client cannot stream a generator task's yields: every task puts its events into one
    Ray queue on the head node (which lives as long as the cluster does, so a worker node that
    dies takes none of them along), read by one thread here."""
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n.get(
        "Resources", {})), None)
    where = {"scheduling_strategy": NodeAffinitySchedulingStrategy(head, soft=False)} if head else {}
    mailbox = Queue(actor_options={"num_cpus": 0, **where})
    for job in jobs:
        tasks[job.cell.id] = ray.remote(mailbox_task).options(**_options(job.cell, asks)).remote(job, mailbox)
    cells = {tasks[job.cell.id]: job.cell for job in jobs}
    threading.Thread(target=_read_mailbox, args=(ray, mailbox, cells, events), daemon=True).start()


def _read_mailbox(ray, mailbox, cells: dict, events: "queue.Queue[Event]") -> None:
    """Events until every task has ended, read in batches (each read is a round trip to the
    head); a task that ended is done once the mailbox holds nothing more (puts are synchronous:
    all it sent is there), lost if it died."""
    running = dict(cells)  # task -> cell
    try:
        while running:
            if _take(mailbox, events):
                continue
            ended, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
            if not ended:
                time.sleep(0.2)
                continue
            _take(mailbox, events)
            for task in ended:
                _ended(ray, task, running.pop(task), events)
    except Exception as exc:  # noqa: BLE001 - the mailbox itself is gone (the head died): every cell left is lost
        for cell in running.values():
            events.put(Event("lost", cell.id, cell, lost_text(exc)))
            events.put(Event("done", cell.id))
        _cancel(ray, {cell.id: task for task, cell in running.items()})


def _take(mailbox, events: "queue.Queue[Event]") -> int:
    """Everything in the mailbox now, in two round trips; how many there were."""
    n = mailbox.size()
    if n:
        for ev in mailbox.get_nowait_batch(n):  # this thread is the only reader: all n are there
            events.put(ev)
    return n


def _ended(ray, task, cell: Cell, events: "queue.Queue[Event]") -> None:
    try:
        ray.get(task)
    except Exception as exc:  # noqa: BLE001 - ray.exceptions.*, as in _follow
        events.put(Event("lost", cell.id, cell, lost_text(exc)))
    events.put(Event("done", cell.id))


def lost_text(exc: BaseException) -> str:
    name = type(exc).__name__
    first = _line(exc, cap=240)
    if "NodeDied" in name or "node" in first.lower() and "died" in first.lower():
        why = "its Ray node died mid-cell"
    elif "Cancel" in name:
        why = "cancelled"
    else:
        why = "its Ray worker died mid-cell"
    return f"{why} ({name}: {first})"


def _cancel(ray, tasks: dict) -> None:
    """Every task killed (a worker's servers die with it); pump's drain then waits for them."""
    for task in list(tasks.values()):
        try:
            ray.cancel(task, force=True)
        except Exception:  # noqa: BLE001 - a task that already ended cannot be cancelled
            pass


def _remove_left(ray, run_name: str) -> None:
    """After the tasks ended: the run's containers that a killed worker could not remove."""
    try:
        for_each_node(ray, remove_containers, run_name, True)
    except Exception:  # noqa: BLE001 - a node without Docker, or one gone: nothing of the run is left there
        pass


# ---------------------------------------------------------------- on a node


def cell_task(job: CellJob):
    """Runs on a Ray node: the cell in a thread of its own, its Events yielded as they come."""
    import ray

    host = socket.gethostname()
    node = node_name(ray.get_runtime_context().get_node_id(), host)
    try:
        device = node_device([str(g) for g in ray.get_gpu_ids()])
    except ValueError as exc:  # the node was started with a device orch cannot use: this cell fails, named
        place = CellPlacement(node=node, host=host, device="?")
        yield Event("started", job.cell.id, place, time.time())
        yield Event("cell", job.cell.id, _unresolved(job.cell, place, exc))
        return
    _fit_omp(device)
    place = CellPlacement(node=node, host=host, device=device.name,
                          gpus=list(device.gpus) if device.gpus else None,
                          cores=list(device.cores) if device.cores else None)
    events: queue.Queue[Event] = queue.Queue()
    threading.Thread(target=_work, args=(job, events, device, place), daemon=True).start()
    while (ev := events.get()).kind != "done":
        yield ev


def _fit_omp(device) -> None:
    """Ray forces OMP_NUM_THREADS=1 on a worker that asks for no CPUs, and a server started from it
    would inherit that: as many threads as the device's cores, or none set, as in a local run."""
    if device.cores:
        os.environ["OMP_NUM_THREADS"] = str(len(device.cores))
    else:
        os.environ.pop("OMP_NUM_THREADS", None)


def mailbox_task(job: CellJob, mailbox) -> None:
    """cell_task for Ray Client: each event put into a Ray queue the orch process reads."""
    for ev in cell_task(job):
        mailbox.put(ev)


def _work(job: CellJob, events: "queue.Queue[Event]", device, place: CellPlacement) -> None:
    folder = Path(tempfile.mkdtemp(prefix="orch-cell-"))
    cell = job.cell
    try:
        events.put(Event("started", cell.id, place, time.time()))
        try:
            sweep = Sweep(job.scenario, Path(job.base_dir), None, job.prompts)
        except OrchError as exc:  # no binary or model on this node: the cell fails here, as a record
            events.put(Event("cell", cell.id, _unresolved(cell, place, exc)))
            return
        sweep.run_name = job.run_name
        events.put(Event("environment", cell.id, capture(engine_env(sweep), sweep.host), place.node))
        sweep.run_cell(cell, job.todo, Relay(events, lambda cid: folder / cid), device, place)
    except BaseException as exc:  # noqa: BLE001 - run_cell records the cell's own failures; this is orch's
        events.put(Event("lost", cell.id, cell, f"internal error on {place.node}: {type(exc).__name__}: {exc}"))
    finally:
        log = folder / cell.id / cell.log_name
        if log.is_file():
            with open(log, "rb") as f:
                f.seek(max(0, log.stat().st_size - LOG_CAP))
                events.put(Event("log", cell.id, f.read(), cell.log_name))
        shutil.rmtree(folder, ignore_errors=True)
        events.put(Event("done", cell.id))


def _unresolved(cell: Cell, place: CellPlacement, exc: Exception) -> CellRecord:
    return CellRecord(cell_id=cell.id, engine=cell.engine.name, kind=cell.engine.kind, launcher=cell.engine.launcher,
                      method=cell.method, n_spec=cell.n_spec, status="failed", started_at=round(time.time(), 3),
                      seconds=0.0, placement=place, error=f"on node {place.node}: {exc}")


# ---------------------------------------------------------------- containers on every node


def for_each_node(ray, fn: Callable[..., T], *args) -> dict[str, T | OrchError]:
    """`fn(*args)` on every alive node of the cluster, each result by node name; a node where it
    failed (or did not answer within 60 s) gets an OrchError naming why."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(fn)
    refs = {node_name(n["NodeID"], n.get("NodeManagerHostname") or "?"): remote.options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args)
        for n in ray.nodes() if n.get("Alive")}
    out: dict[str, T | OrchError] = {}
    for name, ref in refs.items():
        try:
            out[name] = ray.get(ref, timeout=60)
        except Exception as exc:  # noqa: BLE001 - ray.exceptions.*: the node's answer is this error
            cause = getattr(exc, "cause", None) or exc
            out[name] = OrchError(f"{type(cause).__name__}: {_line(cause)}")
    return out


def remove_containers(run_name: str | None, everything: bool) -> list[str]:
    """On a node: orch's containers on its Docker, of `run_name` or (None) orphaned, or all."""
    from orchestrator.launch.docker import list_containers, orphaned, remove

    try:
        found = list_containers(None)
    except OrchError:
        return []  # no Docker on this node
    if run_name is not None:
        found = [c for c in found if c.labels.get("orch.run") == run_name]
    elif not everything:
        found = [c for c in found if orphaned(c)]
    return remove(found)


def down_lines(address: str, everything: bool) -> tuple[list[str], list[str]]:
    """`orch down --cluster ADDRESS`: a line per node cleaned, and a line per node that was not."""
    from orchestrator.launch.docker import removed_text  # docker-py: only where containers are cleaned

    done, failed = [], []
    for node, names in down_on_cluster(address, everything).items():
        if isinstance(names, Exception):
            failed.append(printable(f"{node}: could not clean up ({names}); run orch down on that host"))
        else:
            done.append(f"{printable(node)}: {removed_text(names)}")
    return done, failed


def down_on_cluster(address: str, everything: bool) -> dict[str, list[str] | OrchError]:
    """`orch down --cluster ADDRESS`: the containers removed on each node, or why not."""
    ray = connect(address)
    try:
        return for_each_node(ray, remove_containers, None, everything)
    finally:
        ray.shutdown()
