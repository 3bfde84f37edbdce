"""Launchers start one server for one cell and always stop it.

A launcher is a context manager: entering starts the server, `wait_ready()` blocks until
it answers its health check (or raises), leaving stops it whatever happened.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

from engines.plan import ServerPlan

from orchestrator.common import redact
from orchestrator.common.safefs import nofollow, read_tail
from orchestrator.common.errors import ServerExited, ServerTimeout
from orchestrator.common.show import printable
from orchestrator.launch.shared import Watch, poll_ready, visible_gpus

STOP_GRACE_S = 10.0


def command_text(plan: ServerPlan) -> str:
    """The command line to show and record; a server orch did not start is shown by its URL,
    less any password."""
    if plan.base_url is not None:
        return printable(f"(external server at {redact.public_url(plan.base_url)})")
    return printable(plan.display())  # one line, whatever the scenario's args and env hold


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        data = read_tail(path, 16384)  # a log of any size: its tail only
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class ProcessServer:
    """A local server process in its own process group, logging to `log_path`."""

    def __init__(self, plan: ServerPlan, log_path: Path, ready_timeout_s: float):
        self.plan = plan
        self.log_path = Path(log_path)
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.base_url = f"http://127.0.0.1:{plan.port}"

    def __enter__(self) -> "ProcessServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        open(self.log_path, "ab", opener=nofollow).close()  # a log that cannot be made fails here, before the server starts
        # A new session puts the server and anything it forks in one group we can kill. Its output
        # reaches the log through orch, line by line, so that a key the server prints (its own
        # command line, a config dump) is scrubbed before it is written.
        self.proc = subprocess.Popen(
            self.plan.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **self.plan.env}, start_new_session=True,
            preexec_fn=functools.partial(_child_setup, self.plan.cores),
        )
        self._copier = threading.Thread(target=_copy_scrubbed, args=(self.proc.stdout, self.log_path),
                                        name=f"orch-log {self.proc.pid}", daemon=True)
        self._copier.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def describe(self) -> dict:
        return {"pid": self.proc.pid} if self.proc else {}

    def stop_from_elsewhere(self) -> None:
        """Another thread's Ctrl-C (sweep/parallel.py): the server's group killed; the cell's own
        thread then finds it gone and ends."""
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGKILL)

    def watch(self) -> Watch:
        env = {**os.environ, **self.plan.env}
        gpus = env.get("CUDA_VISIBLE_DEVICES", "x").strip() not in ("", "-1")  # "" and -1 hide every GPU
        return Watch(pid=self.proc.pid if self.proc else None, gpu_ids=visible_gpus(env), gpus=gpus)

    def wait_ready(self, headers: dict | None = None) -> float:
        """Seconds from start until the health check answered 200."""
        url = self.base_url + self.plan.health_path
        return poll_ready([url], self.ready_timeout_s, self._check_exit,
                          lambda: ServerTimeout(f"server not ready after {self.ready_timeout_s:.0f} s (polling {url})",
                                                log_tail(self.log_path)), headers)

    def _check_exit(self) -> None:
        assert self.proc is not None  # wait_ready polls a server that __enter__ started
        code = self.proc.poll()
        if code is not None:
            self._copier.join(5)  # its last lines are the reason it exited
            raise ServerExited(code, log_tail(self.log_path))

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = self._stop(self.proc)
        self._copier.join(5)  # a child that kept the pipe open does not hold orch: the thread is a daemon
        return code

    @staticmethod
    def _stop(proc: subprocess.Popen) -> int | None:
        if proc.poll() is not None:
            return proc.returncode
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            return proc.wait(5)


LOG_LINE_CAP = 1 << 20  # a server that writes without newlines is still copied, a MiB at a time


def _copy_scrubbed(pipe, path: Path) -> None:
    try:
        with pipe, open(path, "ab", opener=nofollow) as log:
            for line in iter(lambda: pipe.readline(LOG_LINE_CAP), b""):
                log.write(redact.scrub(line.decode(errors="replace")).encode())
                log.flush()
    except (OSError, ValueError):
        pass  # the log's disk is full or gone: the server goes on, its cell records say what it did


def _child_setup(cores: tuple[int, ...] | None) -> None:
    """In the child before exec: die with orch, and run on `cores` only (a sweep's device), so the
    server and everything it forks inherit the affinity."""
    _die_with_parent()
    if cores:
        os.sched_setaffinity(0, cores)


def _load_prctl():
    """libc's prctl, looked up here in the parent: a child forked from a threaded orch (cells side
    by side) should do no more than a system call before exec."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: Ctrl-C and SIGTERM still stop the server; `kill -9 orch` may leave it


_PRCTL = _load_prctl()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if orch dies, even by SIGKILL, so none is left running."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class ExternalServer:
    """A server someone else runs: wait until it answers, never start or stop it."""

    def __init__(self, plan: ServerPlan, log_path: Path, ready_timeout_s: float):
        self.plan, self.ready_timeout_s = plan, ready_timeout_s
        assert plan.base_url is not None  # the external launcher is chosen only for a plan with a URL
        self.base_url = plan.base_url.rstrip("/")
        self.log_path = Path(log_path)

    def __enter__(self) -> "ExternalServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8", opener=nofollow) as f:  # never through a link
            f.write(f"external server at {redact.public_url(self.base_url)}: orch has no log of it\n")
        return self

    def __exit__(self, *exc) -> None:
        pass

    def alive(self) -> bool:
        return True

    def stop_from_elsewhere(self) -> None:
        pass  # not orch's to stop

    def describe(self) -> dict:
        return {"url": redact.public_url(self.base_url)}

    def watch(self) -> Watch:
        return Watch(gpus=False, visible=False, unseen=["an external server: orch cannot see its processes or GPUs"])

    def wait_ready(self, headers: dict | None = None) -> float:
        # /health (llama.cpp, vLLM) or, for other servers, /v1/models.
        urls = [self.base_url + p for p in (self.plan.health_path, "/v1/models")]
        shown = redact.public_url(self.base_url)
        return poll_ready(urls, self.ready_timeout_s, lambda: None,
                          lambda: ServerTimeout(f"{shown} did not answer /health or /v1/models within "
                                                f"{self.ready_timeout_s:.0f} s; is the server running?"), headers)


def _docker_server(plan, log_path, ready_timeout_s):
    from orchestrator.launch.docker import DockerServer  # docker-py is only touched by sweeps that use it

    return DockerServer(plan, log_path, ready_timeout_s)


LAUNCHERS = {"process": ProcessServer, "external": ExternalServer, "docker": _docker_server}
