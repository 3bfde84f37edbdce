"""What every launcher shares: waiting for a server's health check, and the labels that mark the
containers orch starts (so `orch ls` and `orch down` find them)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlsplit

from orchestrator.common import probe
from orchestrator.common.errors import AuthRefused

@dataclass
class Watch:
    """What telemetry may sample for one running server (orchestrator/telemetry): its process
    tree on this host, the GPUs it was given (None: every GPU this host has), or a stream of
    `nvidia-smi` lines from inside its container when that runs on another host. `unseen` says
    why a part cannot be sampled."""

    pid: int | None = None
    gpu_ids: list[int] | None = None
    gpus: bool = True  # False: the server was given no GPU
    visible: bool = True  # False: orch cannot see the server's host at all (an external server)
    smi_lines: Callable[[list[str]], Iterable] | None = None  # start `cmd` in the container, its output
    unseen: list[str] = field(default_factory=list)


def visible_gpus(env: dict) -> list[int] | None:
    """CUDA_VISIBLE_DEVICES as NVML indices; None (every GPU) when unset or given as UUIDs.
    NVML counts in PCI order, CUDA by default fastest first: on a host of one GPU model they agree."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    ids = [p.strip() for p in value.split(",") if p.strip()]
    return [int(p) for p in ids] if all(p.isdecimal() and len(p) < 4 for p in ids) else None


MANAGED = "orch.managed"  # label on every container orch starts
POLL_INTERVAL_S = 0.1


def owner_labels(sweep: str, cell: str, run: str) -> dict[str, str]:
    """Labels that let `orch ls` and `orch down` find a run's containers and their owner."""
    return {MANAGED: "1", "orch.sweep": sweep, "orch.cell": cell, "orch.run": run,
            "orch.owner_pid": str(os.getpid()), "orch.owner_host": socket.gethostname()}


def poll_ready(urls: list[str], timeout_s: float, check_exit, timeout_error, headers: dict | None = None) -> float:
    """Seconds until one of `urls` answers 200, polling against a monotonic deadline.
    `check_exit()` raises as soon as the server is gone; `timeout_error()` makes the error
    raised at the deadline; a 401/403 raises AuthRefused at once. `headers` carry the API key."""
    started = time.monotonic()
    while True:
        check_exit()
        if any(_healthy(url, headers) for url in urls):
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise timeout_error()
        time.sleep(POLL_INTERVAL_S)



def _healthy(url: str, headers: dict | None) -> bool:
    """One poll, bounded as a whole (probe.status): a server that drips its answer is not ready."""
    status = probe.status(url, headers, timeout_s=1.0)
    if status in AuthRefused.STATUSES:
        raise AuthRefused(urlsplit(url).path, status)
    return status == 200
