"""What every launcher shares: waiting for a server's health check, and the labels that mark the
containers orch starts (so `orch ls` and `orch down` find them)."""

from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlsplit

from orchestrator.common import probe
from orchestrator.common.errors import AuthRefused

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
