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
import queue
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.common.errors import OrchError
from orchestrator.measure.driver import RequestSpec
from orchestrator.measure.prompts import Prompt
from orchestrator.results.records import CellPlacement, CellRecord
from orchestrator.results.rundir import RunDir
from orchestrator.sweep.environment import capture
from orchestrator.sweep.parallel import LOG_CAP, Event, Relay, Writer, pump
from orchestrator.sweep.placement import node_device
from orchestrator.sweep.runner import Cell, Sweep, engine_env
from orchestrator.sweep.scenario import PlacementSettings, Scenario

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


def connect(address: str):
    """Ray, connected to the cluster at `address`; one line if it cannot be."""
    try:
        import ray
    except ImportError:
        raise OrchError(NEEDS_RAY)
    problem = unreachable(address)
    if problem:
        raise OrchError(f"no Ray cluster at {address!r}: {problem}; start one with `ray start --head` "
                        "(docs/clusters.md) or fix placement.cluster")
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise OrchError(f"no Ray cluster at {address!r}: {str(exc).splitlines()[0][:200]}; start one with "
                        "`ray start --head` (docs/clusters.md) or fix placement.cluster")
    return ray


CONNECT_S = 5.0  # Ray itself retries an unreachable GCS for minutes


def unreachable(address: str) -> str | None:
    """Why nothing answers at a HOST:PORT or ray://HOST:PORT address, or None ("auto" is Ray's to find)."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except (OSError, ValueError) as exc:
        return f"nothing answers at {host}:{port} within {CONNECT_S:.0f} s ({getattr(exc, 'strerror', None) or exc})"
    return None


def node_name(node_id: str) -> str:
    """A Ray node as records name it: its host and the start of its node id (two nodes may share a host)."""
    return f"{socket.gethostname()}-{node_id[:8]}"


def _asks(placed: PlacementSettings) -> dict:
    """The task's resources: the device and nothing else (the node's CPUs are the device's business)."""
    if placed.resource:
        return {"num_cpus": 0, "resources": {placed.resource: 1}}
    return {"num_cpus": 0, "num_gpus": 1}


def run_on_cluster(ray, sweep: Sweep, run: RunDir, placed: PlacementSettings, progress) -> list[CellRecord]:
    """Every cell not yet done in `run`, as Ray tasks (`ray`: connected by `connect`); Ray starts
    each when a device is free."""
    events: queue.Queue[Event] = queue.Queue()
    jobs = sweep.cells_to_run(run)
    tasks = {}
    for cell, todo in jobs:
        job = CellJob(sweep.scenario, str(sweep.base_dir), sweep.prompts, run.path.name, cell, todo)
        opts = dict(name=f"orch {cell.id}", max_retries=0, retry_exceptions=False, **_asks(placed))
        if placed.cluster.startswith("ray://"):  # Ray Client cannot stream a generator task's yields
            from ray.util.queue import Queue

            mailbox = Queue(actor_options={"num_cpus": 0})
            tasks[cell.id] = ray.remote(mailbox_task).options(**opts).remote(job, mailbox)
            follow = (_follow_mailbox, (ray, tasks[cell.id], mailbox, cell, events))
        else:
            tasks[cell.id] = ray.remote(cell_task).options(**opts).remote(job)
            follow = (_follow, (ray, tasks[cell.id], cell, events))
        threading.Thread(target=follow[0], args=follow[1], daemon=True).start()
    writer = Writer(run, progress, len(jobs))
    try:
        pump(events, writer, len(jobs), lambda: _cancel(ray, tasks, run.path.name))
    finally:
        ray.shutdown()
    return writer.records


def _follow(ray, task, cell: Cell, events: "queue.Queue[Event]") -> None:
    """One cell's stream of events, into the writer's queue; a task that dies is a lost cell."""
    try:
        for ref in task:
            events.put(ray.get(ref))
    except Exception as exc:  # noqa: BLE001 - ray.exceptions.*: a node or worker died, the task was cancelled
        events.put(Event("lost", cell.id, cell, lost_text(exc)))
    finally:
        events.put(Event("done", cell.id))


def _follow_mailbox(ray, task, mailbox, cell: Cell, events: "queue.Queue[Event]") -> None:
    """The same through a Ray queue (Ray Client): events until the task has ended and its
    mailbox is empty; a task that died is a lost cell."""
    from ray.util.queue import Empty

    try:
        while True:
            try:
                events.put(mailbox.get(timeout=1.0))
                continue
            except Empty:
                pass
            if ray.wait([task], timeout=0)[0]:
                ray.get(task)  # raises where the task died
                while not mailbox.empty():  # puts are synchronous: everything it sent is here
                    events.put(mailbox.get_nowait())
                return
    except Exception as exc:  # noqa: BLE001 - ray.exceptions.*, as in _follow
        events.put(Event("lost", cell.id, cell, lost_text(exc)))
    finally:
        events.put(Event("done", cell.id))


def lost_text(exc: BaseException) -> str:
    name = type(exc).__name__
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:240]
    if "NodeDied" in name or "node" in first.lower() and "died" in first.lower():
        why = "its Ray node died mid-cell"
    elif "Cancel" in name:
        why = "cancelled"
    else:
        why = "its Ray worker died mid-cell"
    return f"{why} ({name}: {first})"


def _cancel(ray, tasks: dict, run_name: str) -> None:
    for task in tasks.values():
        try:
            ray.cancel(task, force=True)
        except Exception:  # noqa: BLE001 - a task that already ended cannot be cancelled
            pass
    try:
        for_each_node(ray, remove_containers, run_name, True)
    except Exception:  # noqa: BLE001 - a node without Docker: nothing of the run can be left there
        pass


# ---------------------------------------------------------------- on a node


def cell_task(job: CellJob):
    """Runs on a Ray node: the cell in a thread of its own, its Events yielded as they come."""
    import ray

    node = node_name(ray.get_runtime_context().get_node_id())
    device = node_device([str(g) for g in ray.get_gpu_ids()])
    place = CellPlacement(node=node, host=socket.gethostname(), device=device.name,
                          gpus=list(device.gpus) if device.gpus else None,
                          cores=list(device.cores) if device.cores else None)
    events: queue.Queue[Event] = queue.Queue()
    threading.Thread(target=_work, args=(job, events, device, place), daemon=True).start()
    while (ev := events.get()).kind != "done":
        yield ev


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
        log = folder / cell.id / "server.log"
        if log.is_file():
            with open(log, "rb") as f:
                f.seek(max(0, log.stat().st_size - LOG_CAP))
                events.put(Event("log", cell.id, f.read()))
        shutil.rmtree(folder, ignore_errors=True)
        events.put(Event("done", cell.id))


def _unresolved(cell: Cell, place: CellPlacement, exc: OrchError) -> CellRecord:
    return CellRecord(cell_id=cell.id, engine=cell.engine.name, kind=cell.engine.kind, launcher=cell.engine.launcher,
                      method=cell.method, n_spec=cell.n_spec, status="failed", started_at=round(time.time(), 3),
                      seconds=0.0, placement=place, error=f"on node {place.node}: {exc}")


# ---------------------------------------------------------------- containers on every node


def for_each_node(ray, fn, *args) -> dict[str, object]:
    """`fn(*args)` on every alive node of the cluster, each result by node name."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(fn)
    refs = {node_name(n["NodeID"]): remote.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(*args) for n in ray.nodes() if n.get("Alive")}
    return {name: ray.get(ref, timeout=60) for name, ref in refs.items()}


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


def down_on_cluster(address: str, everything: bool) -> dict[str, list[str]]:
    """`orch down --cluster ADDRESS`: the containers removed on each node."""
    ray = connect(address)
    try:
        return for_each_node(ray, remove_containers, None, everything)
    finally:
        ray.shutdown()
