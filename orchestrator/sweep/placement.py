"""Where a cell's server runs: a device of this host (GPU ids, a CPU core set) or a Ray node.

A scenario's `[placement]` names the devices; the sweep runs one cell per device at a time
(sweep/parallel.py), or hands each cell to a Ray cluster (sweep/cluster.py). `place` puts a
device into a cell's ServerPlan: GPU ids become CUDA_VISIBLE_DEVICES for a process and device
requests for a container, a core set the process's CPU affinity (a container's cpuset) and, where
the engine has a thread count, as many threads as cores.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, replace

from engines.plan import ServerPlan

MAX_CORE = 4095  # a core id beyond this is a typo, not a machine

_GPUS = re.compile(r"\d{1,3}(,\d{1,3})*\Z")
_CORES = re.compile(r"\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?)*\Z")
ENV_CORES = "ORCH_CORES"  # a Ray node's core set, declared when the node is started (docs/clusters.md)


def parse_gpus(text: str) -> tuple[int, ...]:
    """"0" or "0,3": one device's GPU ids, as CUDA_VISIBLE_DEVICES spells them."""
    if not isinstance(text, str) or not _GPUS.match(text.strip()):
        raise ValueError(f"{str(text)[:40]!r} is not a list of GPU ids; write \"0\" or \"0,1\"")
    ids = tuple(int(p) for p in text.strip().split(","))
    if len(set(ids)) != len(ids):
        raise ValueError(f"{text!r} names a GPU twice; list each once")
    return ids


def parse_cores(text: str) -> tuple[int, ...]:
    """"0-3,8": one device's CPU cores, as taskset -c spells them."""
    if not isinstance(text, str) or not _CORES.match(text.strip()):
        raise ValueError(f"{str(text)[:40]!r} is not a core set; write \"0\", \"0-3\" or \"0-3,8\"")
    cores: list[int] = []
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first or last > MAX_CORE:
            raise ValueError(f"{part!r} is not a range of core ids from 0 to {MAX_CORE}; write LOW-HIGH")
        cores += range(first, last + 1)
    if len(set(cores)) != len(cores):
        raise ValueError(f"{text!r} names a core twice; list each once")
    return tuple(cores)


@dataclass(frozen=True)
class Device:
    """One place a cell's server may run: its GPUs and/or CPU cores (None: not restricted)."""

    name: str
    gpus: tuple[int, ...] | None = None
    cores: tuple[int, ...] | None = None


def devices_of(gpus: list[str], cores: list[str]) -> list[Device]:
    """The scenario's devices, one per entry (both lists: entry i of each is device i)."""
    n = max(len(gpus), len(cores))
    out = []
    for i in range(n):
        g = parse_gpus(gpus[i]) if gpus else None
        c = parse_cores(cores[i]) if cores else None
        name = " ".join(filter(None, [f"gpu {','.join(map(str, g))}" if g else None, f"cores {_span(c)}" if c else None]))
        out.append(Device(name, g, c))
    return out


def _span(cores: tuple[int, ...]) -> str:
    return f"{cores[0]}-{cores[-1]}" if len(cores) > 1 and cores[-1] - cores[0] == len(cores) - 1 else ",".join(
        map(str, cores))


def unavailable(devices: list[Device], nvml=None) -> tuple[str, str] | None:
    """What is wrong with these devices on this host (cores it may not run on, GPUs it does not
    have), as (the scenario key, the problem), or None. `nvml`: pynvml unless a test hands a fake."""
    allowed = allowed_cores()
    for d in devices:
        missing = sorted(set(d.cores or ()) - allowed)
        if missing:
            return "cores", (f"device {d.name!r}: cores {missing} are not available to orch on this host (it may "
                             f"run on {_span(tuple(sorted(allowed)))}); name cores of this host")
    wanted = sorted({g for d in devices for g in d.gpus or ()})
    if wanted and not os.environ.get("DOCKER_HOST"):  # containers on another host: its GPUs are not seen here
        count, why = gpu_count(nvml)
        beyond = [g for g in wanted if g >= count]
        if beyond:  # CUDA_VISIBLE_DEVICES naming no GPU would leave a CUDA build on the CPU, measured unawares
            return "gpus", (f"GPU ids {beyond} are not on this host ({why}); name GPUs from 0 to {count - 1}"
                            if count else f"this host has no GPU orch can see ({why}); use placement.cores on a CPU host")
    return None


def allowed_cores() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def gpu_count(nvml=None) -> tuple[int, str]:
    """How many GPUs NVML sees here, and how that was found."""
    if nvml is None:
        import pynvml
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return 0, f"NVML: {exc}"
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError as exc:
        return 0, f"NVML: {exc}"
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass
    return count, f"NVML sees {count}"


def node_device(gpu_ids: list[str]) -> Device:
    """The device a Ray task was given on its node: the GPUs Ray assigned it, and the core set the
    node declared in ORCH_CORES when it was started (none: the server may use every core).
    ValueError, naming the fix, if either cannot be used."""
    cores = os.environ.get(ENV_CORES, "")
    try:
        c = parse_cores(cores) if cores else None
    except ValueError as exc:
        raise ValueError(f"{ENV_CORES}={cores[:40]!r} on this node: {exc}; restart the node with a core set") from exc
    missing = sorted(set(c or ()) - allowed_cores())
    if missing:
        raise ValueError(f"{ENV_CORES} names cores {missing} this node's Ray worker may not run on; restart the "
                         f"node with cores of {_span(tuple(sorted(allowed_cores())))}")
    if not all(str(x).isdigit() for x in gpu_ids):
        raise ValueError(f"Ray gave this task GPUs {gpu_ids[:4]} that are not GPU indices; start the node "
                         "without CUDA_VISIBLE_DEVICES UUIDs")
    g = tuple(int(x) for x in gpu_ids) if gpu_ids else None
    name = " ".join(filter(None, [f"gpu {','.join(map(str, g))}" if g else None, f"cores {_span(c)}" if c else None])) or "any"
    return Device(name, g, c)


def place(plan: ServerPlan, device: Device | None, engine) -> ServerPlan:
    """`plan` restricted to `device`; `engine` (engines.Engine) sets its thread count to the cores."""
    if device is None or plan.base_url is not None:  # an external server is where it is
        return plan
    env, argv, container = dict(plan.env), list(plan.argv), plan.container
    if device.cores:
        argv = engine.fit_threads(argv, len(device.cores))
    if container is not None:
        container = replace(container, gpus=device.gpus if device.gpus else container.gpus,
                            cpuset=",".join(map(str, device.cores)) if device.cores else container.cpuset,
                            argv=tuple(engine.fit_threads(list(container.argv), len(device.cores)))
                            if device.cores else container.argv)
    elif device.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, device.gpus))
    return replace(plan, argv=argv, env=env, container=container, cores=device.cores)


def host_name() -> str:
    return socket.gethostname()
